"""The files stages hand to each other, with light readers and writers (numpy / pandas only): the canonical
capture (`capture`) and its version id and diff (`capture_version`), the landmarks table (`landmarks`), per-sequence
fits (`fits`), the lineage a stage output carries (`lineage`). docs/contracts.md, docs/lineage.md."""
