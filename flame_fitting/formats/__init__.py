"""The files stages hand to each other, with light readers and writers (numpy / pandas only): the canonical
capture (`capture`), the landmarks table (`landmarks`), per-sequence fits (`fits`). docs/contracts.md."""
