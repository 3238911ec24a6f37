"""The iOS reader's tests (ios_demo/LoRAGenKit, Swift) use the same golden vectors as the Kotlin core's.

Swift cannot be compiled on this host, so this test checks what it can from here: the golden files
the Swift tests read (listed in one place, GoldenFiles.swift) exist, are current (byte-equal to
what tests/golden/make_golden.py generates, the same generator the currentness test of
test_bundle_format.py runs) and are exactly the files the Kotlin core's tests read, so both phones
test the same vectors.
"""

import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden"
SWIFT_TESTS = ROOT / "ios_demo" / "LoRAGenKit" / "Tests" / "LoRAGenKitTests"
GOLDEN_FILES_SWIFT = SWIFT_TESTS / "GoldenFiles.swift"
KOTLIN_TESTS = ROOT / "android_demo" / "core" / "src" / "test" / "kotlin" / "dev" / "loragen" / "core"
EXPECTED = json.loads((GOLDEN / "expected.json").read_text())
GOLDEN_DIRS = r"(?:keys|bundles|artifacts|base|expected|quant)"


def _strip_comments(src: str) -> str:
    return re.sub(r"//[^\n]*", "", src)


def swift_golden_files() -> list[str]:
    """The string literals of `GoldenFiles.all` in GoldenFiles.swift, in order."""
    src = _strip_comments(GOLDEN_FILES_SWIFT.read_text())
    m = re.search(r"static let all: \[String\] = \[(.*?)\]", src, re.S)
    assert m, "GoldenFiles.swift has no `static let all: [String] = [...]`"
    items = [x.strip() for x in m.group(1).split(",") if x.strip()]
    for x in items:
        assert re.fullmatch(r'"[^"\\]*"', x), f"GoldenFiles.all holds a non-literal: {x}"
    return [x[1:-1] for x in items]


def _listed_vectors(src: str, fn: str, call: str) -> list[str]:
    """The string literals of the list a test function compares the vector names with."""
    m = re.search(re.escape(fn) + r"\(\)[^{]*\{.*?" + re.escape(call) + r"\((.*?)\)", src, re.S)
    assert m, f"no {fn} in the test sources"
    return re.findall(r'"([^"]+)"', m.group(1))


def kotlin_sources() -> str:
    files = sorted(KOTLIN_TESTS.glob("*.kt"))
    assert len(files) >= 8, files
    return "\n".join(_strip_comments(p.read_text()) for p in files)


def kotlin_golden_files() -> tuple[set[str], list[str]]:
    """Golden files the Kotlin tests read, and their templated paths ("base/$backend.safetensors").

    Read directly: path literals (`"keys/public_key.pem"`), `Golden.bundle("name")` and
    `Golden.artifact("backend")`. Read for every vector: GoldenTest iterates the names of
    expected.json (and asserts they are the 17 it lists), reading each bundle and the artifact, base
    and expected files expected.json names for it.
    """
    src = kotlin_sources()
    files = set(re.findall(r'"(' + GOLDEN_DIRS + r'/[^"$]+|expected\.json)"', src))
    files |= {f"bundles/{n}.bundle" for n in re.findall(r'Golden\.bundle\("([^"$]+)"\)', src)}
    files |= {f"artifacts/{b}.json" for b in re.findall(r'Golden\.artifact\("([^"$]+)"\)', src)}
    assert "Golden.bundles" in src and 'File(dir, "expected.json")' in src
    for n in _listed_vectors(src, "fun allSeventeenVectorsArePresent", "listOf"):
        files.add(f"bundles/{n}.bundle")
        files |= {EXPECTED["bundles"][n][k] for k in ("artifact", "base", "expected") if k in EXPECTED["bundles"][n]}
    templates = re.findall(r'"(' + GOLDEN_DIRS + r'/[^"]*\$[^"]*)"', src)
    return files, templates


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    """tests/golden regenerated from scratch by make_golden.generate (what test_bundle_format's
    currentness test runs as a script)."""
    spec = importlib.util.spec_from_file_location("make_golden", GOLDEN / "make_golden.py")
    make_golden = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_golden)
    out = tmp_path_factory.mktemp("golden")
    make_golden.generate(out)
    return out


def test_swift_list_names_existing_golden_files():
    files = swift_golden_files()
    assert len(files) == 44  # 34 bundle vectors + quant/ (index.json and one file per encoding)
    assert len(set(files)) == len(files), "duplicate entries in GoldenFiles.swift"
    assert "expected.json" in files and "keys/public_key.pem" in files
    for rel in files:
        assert (GOLDEN / rel).is_file(), rel
    # every vector of expected.json, and every file expected.json names for it
    assert {f"bundles/{n}.bundle" for n in EXPECTED["bundles"]} <= set(files)
    for n, e in EXPECTED["bundles"].items():
        for k in ("artifact", "base", "expected"):
            if k in e:
                assert e[k] in files, (n, k)


def test_swift_golden_files_are_current(generated):
    """Byte-equal to a fresh run of make_golden.py, so the Swift tests check today's vectors."""
    for rel in swift_golden_files():
        fresh = generated / rel
        assert fresh.is_file(), f"make_golden.py no longer writes {rel}"
        assert fresh.read_bytes() == (GOLDEN / rel).read_bytes(), f"{rel} is stale: run python tests/golden/make_golden.py"


def test_swift_and_kotlin_tests_read_the_same_golden_files():
    kotlin, _ = kotlin_golden_files()
    swift = set(swift_golden_files())
    assert swift == kotlin, {"only swift": sorted(swift - kotlin), "only kotlin": sorted(kotlin - swift)}
    # and that is the whole of tests/golden: both phones test every vector
    on_disk = {str(p.relative_to(GOLDEN)) for p in GOLDEN.rglob("*")
               if p.is_file() and p.suffix != ".py" and "__pycache__" not in p.parts}
    assert swift == on_disk
    assert len([f for f in swift if f.startswith("bundles/")]) == 17


def test_kotlin_templated_paths_stay_within_the_set():
    kotlin, templates = kotlin_golden_files()
    assert len(templates) >= 4, templates  # bundles/$n.bundle, artifacts/$backend.json, base/..., expected/...
    for t in templates:
        parts = re.split(r"\$\{[^}]*\}|\$[A-Za-z_]\w*", t)
        assert len(parts) > 1, t
        pattern = "[^/]+".join(map(re.escape, parts))
        assert any(re.fullmatch(pattern, f) for f in kotlin), f"Kotlin template {t} matches no golden file of the set"


def test_both_readers_list_the_same_seventeen_vectors():
    kotlin = _listed_vectors(kotlin_sources(), "fun allSeventeenVectorsArePresent", "listOf")
    swift_src = _strip_comments((SWIFT_TESTS / "GoldenTests.swift").read_text())
    swift = re.findall(r'"([^"]+)"', re.search(r"func testAllSeventeenVectorsArePresent\(\).*?let listed = \[(.*?)\]",
                                                swift_src, re.S).group(1))
    assert kotlin == swift == sorted(EXPECTED["bundles"])
    assert len(kotlin) == 17
    # the rejected ones carry the code and the one-line message the Swift test compares
    rejected = {n: e for n, e in EXPECTED["bundles"].items() if e["verdict"] == "rejected"}
    assert len(rejected) == 11 and all(e["code"] and e["message"] for e in rejected.values())


def test_swift_tests_only_read_listed_files():
    listed = set(swift_golden_files())
    used: set[str] = set()
    templates: list[str] = []
    sources = sorted(SWIFT_TESTS.glob("*.swift"))
    assert len(sources) >= 9, sources
    for p in sources:
        if p.name == "GoldenFiles.swift":
            continue
        src = _strip_comments(p.read_text())
        used |= {f"bundles/{n}.bundle" for n in re.findall(r'Golden\.bundle(?:URL)?\("([^"\\]+)"\)', src)}
        used |= {f"artifacts/{b}.json" for b in re.findall(r'Golden\.artifact\("([^"\\]+)"\)', src)}
        used |= set(re.findall(r'\b(?:safetensors|bytes|url)\("([^"\\]+)"\)', src))
        templates += re.findall(r'"(' + GOLDEN_DIRS + r'/[^"]*\\\([^"]*)"', src)
        # tests reach golden files only through Golden.url, which refuses paths not in GoldenFiles.all
        assert "tests/golden" not in src or p.name == "TestSupport.swift", p.name
    assert used <= listed, sorted(used - listed)
    assert {"expected.json", "keys/public_key.pem", "keys/other_public_key.pem", "keys/signing_key.pem",
            "bundles/executorch-merged.bundle", "bundles/coreml-lora.bundle", "artifacts/coreml.json",
            "base/coreml.safetensors", "base/executorch.safetensors"} <= used
    assert len(templates) >= 4, templates  # bundles/\(name).bundle, artifacts/..., base/..., expected/...
    for t in templates:
        parts = re.split(r"\\\([^)]*\)", t)
        assert len(parts) > 1, t
        pattern = "[^/]+".join(map(re.escape, parts))
        assert any(re.fullmatch(pattern, f) for f in listed), f"Swift template {t} matches no listed golden file"
    # the non-golden fixture the Swift PtdTests share with the Kotlin PtdTest
    fixture = re.search(r'static let flatcSamplePtd = "([^"]+)"', GOLDEN_FILES_SWIFT.read_text()).group(1)
    assert (ROOT / fixture).stat().st_size == 896
    assert "/flatc-sample.ptd" in kotlin_sources()
