"""`geoface` subcommands of dataset versions (docs/lineage.md): audit, diff-captures, remote."""
from __future__ import annotations

import json
import sys

from .base import CliError, command, show


def audit(args) -> int:
    from geoface.steps.audit import AuditError, audit as run_audit
    from geoface.steps.audit_report import format_report

    report = run_audit(args.model_dir)
    if args.json:
        show({"model": report.model, "stage": report.stage, "card": report.card, "card_error": report.card_error,
              "status": [{"kind": k, "stage": s, "what": w} for k, s, w in report.entries],
              "workspace_captures": dict(report.captures), "capture_search_stopped": report.search_cut,
              "matches": report.matches, "workspace_error": report.workspace_error})
    else:
        print(format_report(report))
    if report.workspace_error:  # the card's lineage is printed; the workspace check could not be made (exit 2)
        sys.stdout.flush()
        raise AuditError(report.workspace_error)
    return 0 if report.matches else 1


def mixed_split_notes(d: dict) -> list[str]:
    """One line for each side of the diff `d` (capture_version.diff_indexes) holding sequences that mix splits
    (`mixed_splits`): the first such sequence and its splits, how many more, and that every other reader refuses it."""
    from flame_fitting.core.names import terminal_safe

    notes = []
    for side in ("old", "new"):
        if mixed := d[side]["mixed_splits"]:
            more = f" (and {len(mixed) - 1} more sequences: --json lists all)" if len(mixed) > 1 else ""
            notes.append(terminal_safe(
                f"{side} {d[side]['where']}: sequence {mixed[0]['sequence']} mixes splits "
                f"{', '.join(map(str, mixed[0]['splits']))}{more}; every other reader (load_capture: the stages, "
                "export) refuses this capture, a sequence's images must share one split; the differences are listed "
                "all the same"))
    return notes


def diff_captures(args) -> int:
    from flame_fitting.formats.capture_version import format_diff
    from geoface.steps.captures_diff import diff_captures as run_diff

    if args.limit < 0:
        raise CliError(f"--limit {args.limit}: must be at least 0 (0 lists all)")
    d = run_diff(args.old, args.new, path=args.path, repo=args.repo)
    print(json.dumps(d, indent=2) if args.json else format_diff(d, args.limit))
    for note in mixed_split_notes(d):  # a capture the stages refuse: said, but the diff was made (exit 0 / 1)
        print(f"geoface diff-captures: warning: {note}", file=sys.stderr)
    return 0 if d["same"] else 1  # diff(1), `git diff --exit-code`: a script's `diff-captures A B || echo changed`


def remote(args) -> int:
    from geoface.steps.remote import check_remote, transfer

    show(check_remote(args.repo) if args.action == "check" else transfer(args.action, args.repo))
    return 0


def register(sub, chosen) -> None:
    """Add the lineage subcommands to `sub` (`chosen` unused: they have no params sections)."""
    p = command(sub, "audit", "print a trained model's lineage (its model card: captures version, shards and head "
                "model hashes, params, git commit, date) and ask DVC (`dvc status` of every stage up to the model) "
                "whether the workspace still holds the data it was trained on; exit status 1 when it does not, or when "
                "that cannot be confirmed (no model card, one that records no captures version, or no capture "
                "folder among the outputs or dependencies of the stages up to the model, or nested in one); the card's "
                "captures version must be among the capture folders found (a capture.json), each of which is listed; "
                "exit status 2 when the audit cannot be made: a MODEL_DIR outside a DVC repository has its card's "
                "lineage printed, then one line on stderr saying the workspace check needs the DVC repository",
                audit, force=None)
    p.add_argument("model_dir", metavar="MODEL_DIR", nargs="?", default=None,
                   help="the model folder, an output of a dvc.yaml stage (default: models/geoface of the DVC "
                        "repository around the working folder)")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of text")

    p = command(sub, "diff-captures", "list the subjects, sequences, frames and cameras added, removed and changed "
                "between two captures; each of OLD and NEW is a capture folder or a git revision (the capture "
                "recorded in that revision's dvc.lock, read through DVC's cache or remote). A camera is changed when "
                "an entry of its K, world_to_cam or dist differs by more than 1e-6 times the largest magnitude of its "
                "block (world_to_cam's rotation, its translation, K's first two rows, ...; a float32 ulp is at most 1.2e-7 of the value: an export and import back is no change; 0.1 px "
                "of a principal point or 0.1 mm of a translation is). Exit status, as diff(1): 0 when nothing differs, "
                "1 when differences are listed, 2 when a capture cannot be read or the command line is wrong; a "
                "capture whose sequence mixes splits (which every other reader refuses) is compared all the same, "
                "with a warning on stderr naming the sequence and its splits (exit status 0 or 1 as above)",
                diff_captures, force=None)
    p.add_argument("old", metavar="OLD", help="capture folder or git revision (commit, branch, tag)")
    p.add_argument("new", metavar="NEW", help="capture folder or git revision (commit, branch, tag)")
    p.add_argument("--path", default="data/captures",
                   help="for a revision: the capture's path in the repository (default: %(default)s)")
    p.add_argument("--repo", default=".", help="for a revision: a folder inside the git + DVC repository "
                   "(default: the working folder)")
    p.add_argument("--json", action="store_true", help="print the difference as JSON instead of text")
    # capture_version.DIFF_LIMIT (that module, and pandas, are imported when the command runs, not to parse it)
    p.add_argument("--limit", type=int, default=50, metavar="N",
                   help="list at most N subjects, sequences, frames or cameras of each kind (added, removed, changed) "
                        "in the text, then how many more; 0 lists all (default: %(default)s; the counts and --json "
                        "always cover all)")

    p = command(sub, "remote", "check the default DVC remote (configured, and writable when it is a local folder), "
                "or push / pull the pipeline's data to / from it with DVC", remote, force=None)
    p.add_argument("action", nargs="?", default="check", choices=("check", "push", "pull"),
                   help="check (default), push or pull")
    p.add_argument("--repo", default=".", help="a folder inside the DVC repository (default: the working folder)")
