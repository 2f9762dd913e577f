"""Summarizes kosoku's Autobahn reports: one line of verdict counts per mode,
then every case that failed or is missing, with what Autobahn expected and
what it observed. Exits 1 if any case failed or is missing.

    python3 conformance/summarize.py [--cases '1.* 2.*'] REPORT_DIR...

Each REPORT_DIR holds kosoku's index.json; its name is the mode's name.

A case passes when its behavior is OK, NON-STRICT or INFORMATIONAL (Autobahn's
"Pass", "Non-Strict" and "Info"; the latter two are still conformant) and its
closing behavior is not FAILED or UNCLEAN. UNIMPLEMENTED is a failure: the
only optional feature the cases test is permessage-deflate (sections 12 and
13), which wsgate implements. WRONG CODE (an unexpected close
code) and FAILED BY CLIENT (the client, not the server, dropped the TCP
connection) are counted and shown but pass, as Autobahn's report colours them
as non-strict.
"""

from __future__ import annotations

import argparse
import collections
import fnmatch
import json
import sys
from pathlib import Path

PASSING_BEHAVIORS = {"OK", "NON-STRICT", "INFORMATIONAL"}
FAILING_CLOSE_BEHAVIORS = {"FAILED", "UNCLEAN"}
DEFAULT_CASES = "1.* 2.* 3.* 4.* 5.* 6.* 7.* 9.* 10.* 12.* 13.*"


def selected_case_ids(globs: list[str]) -> list[str]:
    """The ids of kosoku's cases that the globs select, in suite order."""
    from kosoku.cases import CASES

    return [
        case_id
        for case_id in CASES
        if any(fnmatch.fnmatchcase(case_id, glob) for glob in globs)
    ]


def shorten(value: object, limit: int = 300) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 4] + " ..."


def summarize(report_dir: Path, expected_ids: list[str]) -> bool:
    """Prints the mode's counts and failures; returns whether every case passed."""
    mode = report_dir.name
    index_path = report_dir / "index.json"
    if not index_path.is_file():
        print(f"{mode}: no report ({index_path} is missing)")
        return False
    index = json.loads(index_path.read_text())
    entries = {
        case_id: entry for agent in index.values() for case_id, entry in agent.items()
    }

    behaviors = collections.Counter(entry["behavior"] for entry in entries.values())
    close_behaviors = collections.Counter(
        entry["behaviorClose"] for entry in entries.values()
    )
    seconds = sum(entry["duration"] for entry in entries.values()) / 1000
    missing = [case_id for case_id in expected_ids if case_id not in entries]
    failing = [
        case_id
        for case_id, entry in entries.items()
        if entry["behavior"] not in PASSING_BEHAVIORS
        or entry["behaviorClose"] in FAILING_CLOSE_BEHAVIORS
    ]
    n_passed = len(entries) - len(failing)

    print(
        f"{mode}: {n_passed} of {len(expected_ids)} cases passed in {seconds:.1f} s of case time"
        f" (agent {', '.join(sorted(index)) or '-'})"
    )
    print(f"  behavior:       {dict(sorted(behaviors.items()))}")
    print(f"  close behavior: {dict(sorted(close_behaviors.items()))}")
    for case_id in missing:
        print(f"  MISSING {case_id}: no result in the report")
    for case_id in failing:
        entry = entries[case_id]
        print(
            f"  FAILED {case_id}: behavior {entry['behavior']},"
            f" close behavior {entry['behaviorClose']},"
            f" remote close code {entry['remoteCloseCode']}"
        )
        case_path = report_dir / entry["reportfile"]
        if case_path.is_file():
            case = json.loads(case_path.read_text())
            print(f"    description: {case['description']}")
            print(f"    expectation: {case['expectation']}")
            print(f"    result:      {case['result']}")
            print(f"    close:       {case['resultClose']}")
            print(f"    expected:    {shorten(case['expected'])}")
            print(f"    observed:    {shorten(case['received'])}")
            print(f"    details:     {case_path.with_suffix('.html')}")
    return not missing and not failing


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=DEFAULT_CASES, help="case globs, space-separated")
    parser.add_argument("report_dirs", nargs="+", type=Path)
    args = parser.parse_args()

    expected_ids = selected_case_ids(args.cases.split())
    all_passed = True
    for report_dir in args.report_dirs:
        all_passed &= summarize(report_dir, expected_ids)
    return 0 if all_passed else 1


if __name__ == "__main__":
    sys.exit(main())
