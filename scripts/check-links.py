#!/usr/bin/env python3
"""Every relative link and #anchor in README.md and docs/ resolves: a linked file exists, and
an anchor names a heading of the linked (or the same) markdown file, slugged as GitHub does.
Reference-style links count too: each `[text][label]` has a `[label]: target` definition in its
file, and each definition's target resolves like an inline link's."""
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^\s*(```|~~~)")
DEFINITION = re.compile(r"^ {0,3}\[([^\]]+)\]:\s*(\S+)")
REFERENCE = re.compile(r"\]\[([^\]]+)\]")
CODE_SPAN = re.compile(r"`[^`]*`")


def slug(heading):
    heading = re.sub(r"`", "", heading.strip().lower())
    heading = re.sub(r"[^\w\- ]", "", heading)
    return heading.replace(" ", "-")


def anchors(path):
    found, seen, fenced = set(), {}, False
    for line in path.read_text().splitlines():
        if FENCE.match(line):
            fenced = not fenced
        if fenced or not line.startswith("#"):
            continue
        base = slug(line.lstrip("#"))
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


def unfenced(path):
    fenced = False
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            yield number, CODE_SPAN.sub("", line)


def links(path):
    for number, line in unfenced(path):
        definition = DEFINITION.match(line)
        if definition:
            yield number, definition.group(2)
        else:
            for target in LINK.findall(line):
                yield number, target


def undefined_references(path):
    lines = list(unfenced(path))
    defined = {m.group(1).lower() for _, line in lines if (m := DEFINITION.match(line))}
    for number, line in lines:
        for label in REFERENCE.findall(line):
            if label.lower() not in defined:
                yield number, label


def main():
    files = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    broken = []
    for path in files:
        if not path.exists():
            continue
        for number, label in undefined_references(path):
            broken.append(f"{path.relative_to(ROOT)}:{number}: [{label}]: no definition")
        for number, target in links(path):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):
                continue  # http(s), mailto: not checked offline
            file_part, _, anchor = target.partition("#")
            linked = (path.parent / file_part).resolve() if file_part else path
            where = f"{path.relative_to(ROOT)}:{number}: {target}"
            if not linked.exists():
                broken.append(f"{where}: no such file")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                broken.append(f"{where}: no heading for #{anchor}")
    if broken:
        sys.exit("broken links:\n" + "\n".join(broken))
    print(f"links ok in {len(files)} files")


main()
