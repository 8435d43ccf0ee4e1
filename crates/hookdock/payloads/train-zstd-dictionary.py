#!/usr/bin/env python3
"""Regenerates github-webhooks.zdict, the zstd dictionary hookdock stores delivery bodies with.

Trained with `zstd --train-cover` on the real payloads of shared/fixtures/webhooks/, compacted
as GitHub sends them (no whitespace, keys and values in order), except the held-out payloads
below: pull_request.opened.0 is the benchmark's payload, and three others to check the
dictionary on payloads it has not seen.

The dictionary must know GitHub's payloads, not these fixtures' data: most of them come from one
repository (Codertocat/Hello-World, the benchmark payload's too) and share its ids, node ids,
times and texts, and a dictionary holding those would compress the benchmark's body far better
than any real installation's. So each training payload is scrubbed first: account logins and
repository names are replaced everywhere in it (URLs included) by tokens of the same length, and
every other value that belongs to one object rather than to the format (texts, ids, node ids,
times, hashes, numbers) by random characters of the same kind and length, seeded by the file
name. What is left for the dictionary is the format: keys, URL templates, and short fixed words
(states, types, visibility). The benchmark then measures what an unknown repository gets.

k and d are what `--train-cover` without parameters chose for these inputs (zstd 1.5.4); they are
fixed so a rerun gives the same bytes, quickly.

Bodies stored with a dictionary can only be read back with that same dictionary (hookdock
refuses any other dictionary ID): a new dictionary must be added next to this one, not replace it.

Usage: python3 crates/hookdock/payloads/train-zstd-dictionary.py [FIXTURES_DIR]
"""

import json
import pathlib
import random
import re
import string
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
OUTPUT = HERE / "github-webhooks.zdict"
# shared/ sits beside the clone (see shared/fixtures/README.md).
FIXTURES = HERE.parents[2].parent / "shared" / "fixtures" / "webhooks"
HELD_OUT = {
    "pull_request.opened.0.json",  # the benchmark's payload
    "push.none.4.json",
    "workflow_run.completed.1.json",
    "check_run.requested_action.0.json",  # a repository no other fixture is from
}
MAX_DICT = 64 * 1024
COVER = "k=770,d=8"


def names(value, found: set) -> set:
    """Account logins and repository names anywhere in a payload."""
    if isinstance(value, dict):
        for key, inner in value.items():
            if key in ("login", "name", "full_name") and isinstance(inner, str):
                found.update(part for part in inner.split("/") if len(part) >= 3)
            names(inner, found)
    elif isinstance(value, list):
        for inner in value:
            names(inner, found)
    return found


def same_kind(text: str, rng: random.Random) -> str:
    """Random characters where `text` has letters or digits; everything else kept."""
    out = []
    for ch in text:
        if ch.isdigit():
            out.append(rng.choice(string.digits))
        elif ch.islower():
            out.append(rng.choice(string.ascii_lowercase))
        elif ch.isupper():
            out.append(rng.choice(string.ascii_uppercase))
        else:
            out.append(ch)
    return "".join(out)


# Values that are part of the format: kept as they are.
FIXED_WORD = re.compile(r"[A-Za-z_]{1,20}")


def scrubbed(value, rng: random.Random):
    """`value` with what belongs to one object replaced (see the module docs); URLs are kept."""
    if isinstance(value, dict):
        return {key: scrubbed(inner, rng) for key, inner in value.items()}
    if isinstance(value, list):
        return [scrubbed(inner, rng) for inner in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return int(same_kind(str(value), rng).lstrip("0") or "0")
    if isinstance(value, float):
        return value
    if value.startswith(("http://", "https://", "git://", "git@", "ssh://")):
        return value
    if FIXED_WORD.fullmatch(value):
        return value
    return same_kind(value, rng)


def training_text(src: pathlib.Path) -> str:
    """A fixture, compacted as GitHub sends it, scrubbed of its own data."""
    doc = json.loads(src.read_bytes())
    rng = random.Random(src.name)
    text = json.dumps(scrubbed(doc, rng), separators=(",", ":"), ensure_ascii=False)
    for name in sorted(names(doc, set()), key=lambda n: (-len(n), n)):
        text = text.replace(name, same_kind(name, rng))
    return text


def main() -> None:
    fixtures = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else FIXTURES
    sources = sorted(p for p in fixtures.glob("*.json") if p.name not in HELD_OUT)
    if len(sources) < 100:
        sys.exit(f"only {len(sources)} payloads in {fixtures}")
    with tempfile.TemporaryDirectory() as tmp:
        samples = []
        for src in sources:
            sample = pathlib.Path(tmp) / src.name
            sample.write_bytes(training_text(src).encode("utf-8"))
            samples.append(str(sample))
        subprocess.run(
            ["zstd", "-q", "-f", f"--train-cover={COVER}", f"--maxdict={MAX_DICT}",
             "-o", str(OUTPUT), *samples],
            check=True,
        )
    dictionary = OUTPUT.read_bytes()
    dict_id = int.from_bytes(dictionary[4:8], "little")
    print(f"{OUTPUT.name}: {len(dictionary)} bytes, dictionary ID {dict_id}, "
          f"from {len(sources)} payloads")


if __name__ == "__main__":
    main()
