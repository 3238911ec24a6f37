"""Structural and manifest mutations of valid golden bundles, each with its expected verdict.

Shared by tests/test_bundle_fuzz.py (hypothesis drives the choices, tens of thousands of cases)
and make_golden.py (a seeded sample written to expected.json "mutations", which the Kotlin and
Swift readers replay and must refuse with the same code, or accept).

The oracle is this file, not the reader: every mutation family knows from docs/bundle-format.md
which check is the first to fail (its code) or that the bundle stays valid (code None). Mutated
bundles are re-signed with the golden test key unless the family is about the signature, so the
checks behind the signature are the ones exercised.

A mutation works on the parsed header and manifest (Python objects), then renders them as the
writer does (format.serialize: compact JSON, manifest keys sorted, header padded with spaces);
values JSON cannot hold as Python objects (integers of 5000 digits, repeated keys) enter as text.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from dataclasses import dataclass, field

SIG_KEY = "loragen.signature"
MANIFEST_KEY = "loragen.manifest"
ZEROS = "0" * 128
HUGE = "@@HUGE@@"  # placeholder: a JSON integer of 5000 digits
HUGE_TEXT = "7" * 5000
BASES = ("executorch-merged", "coreml-lora", "onnx-lora", "coreml-merged")
ESIZE = {"F32": 4, "F16": 2, "BF16": 2, "I8": 1, "U8": 1, "I32": 4, "I64": 8}
# values swapped in for a JSON value of another type
OTHER_VALUES = ("list", "object", "string", "int", "float", "true", "null", "nan", "inf", "-inf", "huge")


def _copy(v):
    """Deep copy of a parsed JSON value (faster than copy.deepcopy; the bases hold no NaN)."""
    return json.loads(json.dumps(v))


def other_value(kind: str):
    return {"list": [1], "object": {"a": 1}, "string": "x", "int": 7, "float": 0.5, "true": True, "null": None,
            "nan": math.nan, "inf": math.inf, "-inf": -math.inf, "huge": HUGE}[kind]


@dataclass
class Base:
    name: str
    raw: bytes
    header_text: str  # the header as signed: padding stripped, signature field all zeros
    header: dict
    manifest: dict
    data: bytes
    signature: str

    @property
    def kind(self) -> str:
        return self.manifest["kind"]


def load_base(name: str, raw: bytes) -> Base:
    (n,) = struct.unpack("<Q", raw[:8])
    text = raw[8:8 + n].decode("ascii").rstrip(" ")
    sig = json.loads(text)["__metadata__"][SIG_KEY]
    text = text.replace(f'"{SIG_KEY}":"{sig}"', f'"{SIG_KEY}":"{ZEROS}"', 1)
    header = json.loads(text)
    return Base(name, raw, text, header, json.loads(header["__metadata__"][MANIFEST_KEY]), raw[8 + n:], sig)


@dataclass
class Case:
    base: str
    family: str
    header_text: str
    data: bytes
    signature: str = "key"  # "key": sign with the test key; "zero": unsigned; else this 128-hex value
    pubkey: bool = True
    allow_unsigned: bool = False
    codes: frozenset = field(default_factory=frozenset)  # acceptable codes; {None}: must verify


def assemble(header_text: str, data: bytes, signature: str, sign) -> bytes:
    """Bundle bytes: padded header, data, then the signature field filled in (first occurrence)."""
    hb = header_text.encode("utf-8")
    hb += b" " * (-len(hb) % 8)
    raw = bytearray(struct.pack("<Q", len(hb)) + hb + data)
    if signature == "zero":
        return bytes(raw)
    needle = f'"{SIG_KEY}":"{ZEROS}"'.encode()
    at = raw.find(needle, 8, 8 + len(hb))
    if at < 0:
        return bytes(raw)
    sig = sign(hashlib.sha256(bytes(raw)).digest()).hex() if signature == "key" else signature
    start = at + len(needle) - 129
    raw[start:start + 128] = sig.encode()
    return bytes(raw)


def diff(a, b) -> dict:
    """The one edit that turns a into b: {"at", "cut", "insert"} (common prefix and suffix kept)."""
    p = 0
    while p < min(len(a), len(b)) and a[p] == b[p]:
        p += 1
    s = 0
    while s < min(len(a), len(b)) - p and a[len(a) - 1 - s] == b[len(b) - 1 - s]:
        s += 1
    return {"at": p, "cut": len(a) - p - s, "insert": b[p:len(b) - s]}


def apply_edit(a, edit: dict):
    return a[:edit["at"]] + edit["insert"] + a[edit["at"] + edit["cut"]:]


def to_vector(base: Base, case: Case, code, sha256: str) -> dict:
    """A case as a compact, language-neutral record (expected.json "mutations")."""
    h = diff(base.header_text, case.header_text)
    d = diff(base.data, case.data)
    return {"base": base.name, "family": case.family, "header": h,
            "data": {"at": d["at"], "cut": d["cut"], "insert": d["insert"].hex()},
            "signature": case.signature, "pubkey": case.pubkey, "allow_unsigned": case.allow_unsigned,
            "sha256": sha256, "code": code,
            # the bytes before the signature is filled in (CryptoKit's Ed25519 signatures are randomized,
            # so a Swift rebuild matches these, not the signed file)
            "unsigned_sha256": hashlib.sha256(assemble(case.header_text, case.data, "zero", None)).hexdigest()}


def from_vector(base: Base, v: dict, sign) -> bytes:
    text = apply_edit(base.header_text, v["header"])
    d = v["data"]
    data = apply_edit(base.data, {"at": d["at"], "cut": d["cut"], "insert": bytes.fromhex(d["insert"])})
    return assemble(text, data, v["signature"], sign)


# ------------------------------------------------------------------------------- rendering

def _tensors(header: dict, data: bytes) -> list[tuple[str, str, list, bytes]]:
    out = []
    for n, spec in header.items():
        if n != "__metadata__":
            b, e = spec["data_offsets"]
            out.append((n, spec["dtype"], spec["shape"], data[b:e]))
    return out


def _layout(tensors) -> tuple[dict, bytes]:
    """Header entries and data section for (name, dtype, shape, bytes), in the writer's order."""
    order = sorted(tensors, key=lambda t: (-ESIZE[t[1]], t[0]))
    entries, chunks, pos = {}, [], 0
    for n, dt, shape, b in order:
        entries[n] = {"dtype": dt, "shape": list(shape), "data_offsets": [pos, pos + len(b)]}
        chunks.append(b)
        pos += len(b)
    return entries, b"".join(chunks)


KEEP = object()  # render(): keep the header's manifest entry as it is


def render(header: dict, manifest, manifest_text_edit=None, header_text_edit=None) -> str:
    if manifest is KEEP:
        mtext = None
    elif isinstance(manifest, str):
        mtext = manifest
    else:
        mtext = json.dumps(manifest, sort_keys=True, separators=(",", ":")).replace(f'"{HUGE}"', HUGE_TEXT)
    if manifest_text_edit:
        mtext = manifest_text_edit(mtext)
    h = dict(header)
    if mtext is not None and isinstance(h.get("__metadata__"), dict) and MANIFEST_KEY in h["__metadata__"]:
        h["__metadata__"] = dict(h["__metadata__"], **{MANIFEST_KEY: mtext})
    text = json.dumps(h, separators=(",", ":"), ensure_ascii=True).replace(f'"{HUGE}"', HUGE_TEXT)
    return header_text_edit(text) if header_text_edit else text


# ------------------------------------------------------------------------------- families

class Mutator:
    """Draws one mutation of a base bundle. ``pick`` has choice(seq) and integer(lo, hi)."""

    def __init__(self, pick):
        self.pick = pick

    def case(self, base: Base) -> Case:
        fam = self.pick.choice(FAMILIES)
        return getattr(self, fam)(base)

    # helpers
    def _tensor(self, base: Base) -> str:
        return self.pick.choice(sorted(base.manifest["tensors"]))

    def _case(self, base, family, header=None, manifest=None, data=None, codes=(None,), mte=None, hte=None, **kw):
        header = base.header if header is None else header
        manifest = base.manifest if manifest is None else manifest
        text = render(header, manifest, mte, hte)
        return Case(base.name, family, text, base.data if data is None else data, codes=frozenset(codes), **kw)

    # families ------------------------------------------------------------------------------
    def identity(self, base):
        return self._case(base, "identity")

    def signature_rule(self, base):
        which = self.pick.choice(["signed-nokey-allow", "signed-nokey", "unsigned-key", "unsigned-nokey-allow",
                                  "unsigned-key-allow", "unsigned-nokey", "old-signature", "garbage-signature"])
        if which.startswith("signed"):
            return self._case(base, "signature_rule", pubkey=False, allow_unsigned=which.endswith("allow"),
                              codes={"key_required"})
        if which.startswith("unsigned"):
            code = {"unsigned-key": "unsigned", "unsigned-nokey-allow": None, "unsigned-key-allow": None,
                    "unsigned-nokey": "key_required"}[which]
            return self._case(base, "signature_rule", signature="zero", pubkey="-key" in which,
                              allow_unsigned=which.endswith("allow"), codes={code})
        key = self.pick.choice([True, False])
        if which == "old-signature":  # weights rewritten (manifest digest updated), the old signature kept
            m = _copy(base.manifest)
            data = bytearray(base.data)
            name = self._tensor(base)
            b, e = base.header[name]["data_offsets"]
            data[b] ^= 0x01
            m["tensors"][name]["sha256"] = hashlib.sha256(bytes(data[b:e])).hexdigest()
            return self._case(base, "signature_rule", manifest=m, data=bytes(data), signature=base.signature,
                              pubkey=key, allow_unsigned=not key, codes={"bad_signature" if key else "key_required"})
        sig = "%0128x" % self.pick.integer(1, 2 ** 512 - 1)
        return self._case(base, "signature_rule", signature=sig, pubkey=key, allow_unsigned=not key,
                          codes={"bad_signature" if key else "key_required"})

    def _manifest_paths(self, base):
        t = self._tensor(base)
        paths = [("format",), ("format_version",), ("kind",), ("base",), ("base", "backend"), ("base", "fingerprint"),
                 ("base", "model_id"), ("base", "config_hash"), ("tensors",), ("tensors", t),
                 ("tensors", t, "param"), ("tensors", t, "slot"), ("tensors", t, "dtype"), ("tensors", t, "shape"),
                 ("tensors", t, "sha256"), ("tensors", t, "slot", "key"), ("tensors", t, "slot", "file"),
                 ("generator_id",), ("task_sha256",), ("key_id",), ("created",)]
        if base.kind == "lora":
            paths += [("lora",), ("lora", "r"), ("lora", "alpha"), ("lora", "scale")]
        if "offset" in base.manifest["tensors"][t]["slot"]:
            paths.append(("tensors", t, "slot", "offset"))
        return paths

    @staticmethod
    def _path_code(path, how, value=None):
        """First failing check when the manifest value at ``path`` is dropped or replaced."""
        top = path[0]
        if how == "type" and value == HUGE:
            return "manifest"  # the manifest JSON itself is refused
        if top in ("generator_id", "task_sha256", "key_id", "created", "task"):
            return None  # informational fields, not checked
        if top == "base" and len(path) == 2 and path[1] in ("model_id", "config_hash"):
            return None
        table = {"format": "format", "format_version": "version", "kind": "kind", "base": "backend",
                 "tensors": "manifest", "lora": "manifest"}
        if len(path) == 1 or top in ("lora",):
            return table[top]
        if top == "base":
            return path[1]  # backend / fingerprint
        # tensors.<name>...
        if len(path) == 2:
            return "manifest"
        f = path[2]
        if len(path) == 4:
            return "slot"
        if how == "drop":
            return "manifest"
        # a value of another type: the entry's field type check, unless the type is the right one
        right = {"param": str, "slot": dict, "dtype": str, "shape": list, "sha256": str}[f]
        if isinstance(value, right) and not isinstance(value, bool):
            return {"param": "slot", "slot": "slot", "dtype": "manifest", "shape": "manifest", "sha256": "digest"}[f]
        return "manifest"

    def manifest_drop(self, base):
        path = self.pick.choice(self._manifest_paths(base))
        m = _copy(base.manifest)
        node = m
        for k in path[:-1]:
            node = node[k]
        del node[path[-1]]
        return self._case(base, "manifest_drop", manifest=m, codes={self._path_code(path, "drop")})

    def manifest_type(self, base):
        path = self.pick.choice(self._manifest_paths(base))
        value = other_value(self.pick.choice(OTHER_VALUES))
        m = _copy(base.manifest)
        node = m
        for k in path[:-1]:
            node = node[k]
        old = node[path[-1]]
        node[path[-1]] = value
        if type(old) is type(value) and old == value:
            return self._case(base, "manifest_type", manifest=m)
        return self._case(base, "manifest_type", manifest=m, codes={self._path_code(path, "type", value)})

    def manifest_add(self, base):
        where = self.pick.choice(["top", "base", "entry", "lora", "slot", "tensor"])
        m = _copy(base.manifest)
        value = other_value(self.pick.choice([v for v in OTHER_VALUES if v != "huge"]))
        t = self._tensor(base)
        if where == "lora" and base.kind != "lora":
            where = "top"
        node = {"top": m, "base": m["base"], "entry": m["tensors"][t], "lora": m.get("lora"),
                "slot": m["tensors"][t]["slot"], "tensor": m["tensors"]}[where]
        node["zz_extra" if where != "tensor" else "zz.extra.weight"] = value
        code = {"slot": "slot", "tensor": "manifest"}.get(where)
        return self._case(base, "manifest_add", manifest=m, codes={code})

    def manifest_value(self, base):
        m = _copy(base.manifest)
        t = self._tensor(base)
        e = m["tensors"][t]
        choices = ["kind-swap", "kind-other", "backend", "fingerprint", "version", "param-other", "shape-T", "dtype",
                   "sha256", "slot-offset-float"]
        if base.kind == "lora":
            choices += ["r+1", "r0", "r-huge", "r-float", "alpha-nan", "alpha-1e38", "scale-inf", "scale-big",
                        "scale-x2", "scale-wrong"]
        which = self.pick.choice(choices)
        code = None
        if which == "kind-swap":
            m["kind"] = "merged" if base.kind == "lora" else "lora"
            code = "missing_tensor" if base.kind == "lora" else "manifest"
        elif which == "kind-other":
            m["kind"] = self.pick.choice(["delta", "", "Merged", "lora "])
            code = "kind"
        elif which == "backend":
            m["base"]["backend"] = self.pick.choice([b for b in ("executorch", "onnx", "coreml") if b != m["base"]["backend"]])
            code = "backend"
        elif which == "fingerprint":
            m["base"]["fingerprint"] = "%064x" % self.pick.integer(0, 2 ** 256 - 1)
            code = "fingerprint" if m["base"]["fingerprint"] != base.manifest["base"]["fingerprint"] else None
        elif which == "version":
            m["format_version"] = self.pick.choice([2, 0, -1, 1.0, True, "1", 10 ** 30])
            code = "version"
        elif which == "param-other":
            others = sorted({x["param"] for x in m["tensors"].values()} - {e["param"]})
            e["param"] = self.pick.choice(others + ["model.layers.0.mlp.nope.weight"])
            code = "slot"
        elif which == "shape-T":
            e["shape"] = e["shape"][::-1]
            code = "manifest"
        elif which == "dtype":
            e["dtype"] = self.pick.choice([d for d in ESIZE if d != e["dtype"]])
            code = "manifest"
        elif which == "sha256":
            e["sha256"] = "%064x" % self.pick.integer(0, 2 ** 256 - 1)
            code = "digest"
        elif which == "slot-offset-float":
            k = "offset" if "offset" in e["slot"] else "file"
            e["slot"][k] = float(e["slot"][k]) if k == "offset" else e["slot"][k] + "x"
            code = "slot"
        else:
            lo = m["lora"]
            r, alpha = lo["r"], lo["alpha"]
            code = "manifest"
            if which == "r+1":
                lo["r"], lo["scale"] = r + 1, alpha / (r + 1)
                code = "shape"
            elif which == "r0":
                lo["r"] = 0
            elif which == "r-huge":
                lo["r"] = self.pick.choice([65537, 10 ** 40, HUGE])
            elif which == "r-float":
                lo["r"] = float(r)
            elif which == "alpha-nan":
                lo["alpha"] = lo["scale"] = math.nan
            elif which == "alpha-1e38":
                lo["alpha"], lo["scale"] = 1e38, 1e38 / r
            elif which == "scale-inf":
                lo["alpha"] = lo["scale"] = math.inf
            elif which == "scale-big":
                lo["scale"] = float(self.pick.integer(1025, 10 ** 6))
                lo["alpha"] = lo["scale"] * r
            elif which == "scale-x2":  # a different but valid scale: signed, so accepted
                lo["alpha"], lo["scale"] = alpha * 2, alpha * 2 / r
                code = None
            else:
                lo["scale"] = lo["scale"] * 1.5
        return self._case(base, "manifest_value", manifest=m, codes={code})

    def header_entry(self, base):
        h = _copy(base.header)
        t = self._tensor(base)
        spec = h[t]
        which = self.pick.choice(["dtype-type", "dtype-unknown", "dtype-other", "shape-type", "shape-elem", "shape-T",
                                  "shape-numel", "offsets-type", "offsets-elem", "entry-type", "entry-extra",
                                  "entry-drop"])
        code = "tensor_header"
        if which == "dtype-type":
            v = other_value(self.pick.choice(OTHER_VALUES))
            spec["dtype"] = v
            code = "header_json" if v == HUGE else "tensor_header"
        elif which == "dtype-unknown":
            spec["dtype"] = self.pick.choice(["F64", "f32", "", "BOOL", "F8_E4M3"])
        elif which == "dtype-other":
            d = self.pick.choice([d for d in ESIZE if d != spec["dtype"]])
            spec["dtype"] = d
            code = "manifest" if ESIZE[d] == ESIZE[base.header[t]["dtype"]] else "data_offsets"
        elif which == "shape-type":
            v = other_value(self.pick.choice([x for x in OTHER_VALUES if x != "list"]))
            spec["shape"] = v
            code = "header_json" if v == HUGE else "tensor_header"
        elif which == "shape-elem":
            i = self.pick.integer(0, len(spec["shape"]) - 1)
            v = self.pick.choice(["float", "true", "null", "nan", "neg", "huge", "big", "string"])
            spec["shape"][i] = {"float": float(spec["shape"][i]), "true": True, "null": None, "nan": math.nan,
                                "neg": -spec["shape"][i], "huge": HUGE, "big": 10 ** 30, "string": "8"}[v]
            code = {"huge": "header_json", "big": "data_offsets"}.get(v, "tensor_header")
        elif which == "shape-T":
            if spec["shape"][0] == spec["shape"][1]:
                return self._case(base, "header_entry", header=h)
            spec["shape"] = spec["shape"][::-1]
            code = "manifest"
        elif which == "shape-numel":
            spec["shape"] = [spec["shape"][0] + self.pick.integer(1, 3), spec["shape"][1]]
            code = "data_offsets"
        elif which == "offsets-type":
            v = self.pick.choice(["list1", "list3", "object", "string", "int", "null", "huge"])
            b, e = spec["data_offsets"]
            spec["data_offsets"] = {"list1": [b], "list3": [b, e, e], "object": {"a": b}, "string": f"{b}",
                                    "int": b, "null": None, "huge": HUGE}[v]
            code = "header_json" if v == "huge" else "tensor_header"
        elif which == "offsets-elem":
            i = self.pick.integer(0, 1)
            v = self.pick.choice(["float", "true", "nan", "inf", "huge"])
            spec["data_offsets"][i] = {"float": float(spec["data_offsets"][i]), "true": True, "nan": math.nan,
                                       "inf": math.inf, "huge": HUGE}[v]
            code = "header_json" if v == "huge" else "tensor_header"
        elif which == "entry-type":
            v = other_value(self.pick.choice([x for x in OTHER_VALUES if x != "object"]))
            h[t] = v
            code = "header_json" if v == HUGE else "tensor_header"
        elif which == "entry-extra":
            spec[self.pick.choice(["x", "DTYPE", "data_offsets "])] = 1
        else:
            del spec[self.pick.choice(["dtype", "shape", "data_offsets"])]
        return self._case(base, "header_entry", header=h, codes={code})

    def metadata(self, base):
        h = _copy(base.header)
        meta = h["__metadata__"]
        which = self.pick.choice(["meta-type", "meta-extra-string", "meta-extra-other", "sig-type", "sig-format",
                                  "manifest-drop", "manifest-type", "manifest-text", "manifest-dup", "header-dup",
                                  "entry-dup", "meta-dup", "header-huge", "header-array"])
        hte = mte = None
        code = "metadata"
        m = base.manifest
        if which == "meta-type":
            v = other_value(self.pick.choice([x for x in OTHER_VALUES if x != "object"]))
            h["__metadata__"] = v
            code = "header_json" if v == HUGE else "metadata"
        elif which == "meta-extra-string":
            meta["zz.other"] = self.pick.choice(["", "x", "1", "\u00e9"])
            code = None
        elif which == "meta-extra-other":
            v = other_value(self.pick.choice([x for x in OTHER_VALUES if x != "string"]))
            meta["zz.other"] = v
            code = "header_json" if v == HUGE else "metadata"
        elif which == "sig-type":
            v = other_value(self.pick.choice([x for x in OTHER_VALUES if x != "string"]))
            meta[SIG_KEY] = v
            code = "header_json" if v == HUGE else "metadata"
        elif which == "sig-format":
            meta[SIG_KEY] = self.pick.choice(["0" * 127, "0" * 129, "A" * 128, "g" * 128, ""])
            code = "signature_field"
        elif which == "manifest-drop":
            del meta[MANIFEST_KEY]
            code = "manifest"
        elif which == "manifest-type":
            v = other_value(self.pick.choice([x for x in OTHER_VALUES if x != "string"]))
            meta[MANIFEST_KEY] = v
            m = KEEP
            code = "header_json" if v == HUGE else "metadata"
        elif which == "manifest-text":
            m = self.pick.choice(["", "{", "[1]", "null", "1", '"x"', "{}", "NaN"])
            code = "manifest" if m in ("", "{") else "format"
        elif which == "manifest-dup":
            key = self.pick.choice(["kind", "format", "zz"])
            mte = lambda s: '{"%s":1,' % key + s[1:]  # noqa: E731
            code = "duplicate_name" if key != "zz" else None
        elif which == "header-dup":
            t = self._tensor(base)
            spec = json.dumps(base.header[t], separators=(",", ":"))
            hte = lambda s: s[:-1] + ',"%s":%s}' % (t, spec)  # noqa: E731
            code = "duplicate_name"
        elif which == "entry-dup":
            t = self._tensor(base)
            hte = lambda s: s.replace('"%s":{"dtype":' % t, '"%s":{"dtype":"F32","dtype":' % t, 1)  # noqa: E731
            code = "duplicate_name"
        elif which == "meta-dup":
            hte = lambda s: s.replace('{"__metadata__":{', '{"__metadata__":{"%s":"x",' % SIG_KEY, 1)  # noqa: E731
            code = "duplicate_name"
        elif which == "header-huge":
            hte = lambda s: s[:-1] + ',"zz":%s}' % HUGE_TEXT  # noqa: E731
            code = "header_json"
        else:
            hte = lambda s: "[" + s + "]"  # noqa: E731
            code = "header_json"
        return self._case(base, "metadata", header=h, manifest=m, mte=mte, hte=hte, codes={code})

    def offsets(self, base):
        h = _copy(base.header)
        names = sorted(base.manifest["tensors"])
        t = self.pick.choice(names)
        spec = h[t]
        b, e = spec["data_offsets"]
        which = self.pick.choice(["overlap", "shift", "beyond", "negative", "swap", "trailing", "cut"])
        data = None
        code = "data_offsets"
        if which == "overlap":
            same = [n for n in names if n != t and base.header[n]["data_offsets"][1] - base.header[n]["data_offsets"][0] == e - b]
            if not same:
                return self._case(base, "offsets", header=h)
            spec["data_offsets"] = list(base.header[self.pick.choice(same)]["data_offsets"])
        elif which == "shift":
            d = self.pick.choice([-1, 1, 2, 8])
            spec["data_offsets"] = [b + d, e + d]
        elif which == "beyond":
            spec["data_offsets"] = [len(base.data), len(base.data) + e - b]
        elif which == "negative":
            spec["data_offsets"] = [-(e - b), 0]
        elif which == "swap":  # two tensors of the same size swap places: each reads the other's bytes
            same = [n for n in names if n != t and base.header[n]["data_offsets"][1] - base.header[n]["data_offsets"][0] == e - b
                    and base.header[n]["dtype"] == spec["dtype"] and base.header[n]["shape"] == spec["shape"]]
            if not same:
                return self._case(base, "offsets", header=h)
            o = self.pick.choice(same)
            h[o]["data_offsets"], spec["data_offsets"] = spec["data_offsets"], h[o]["data_offsets"]
            code = "digest"
        elif which == "trailing":
            data = base.data + bytes(self.pick.integer(1, 16))
        else:
            data = base.data[:-self.pick.integer(1, 16)]
        return self._case(base, "offsets", header=h, data=data, codes={code})

    def tensor_set(self, base):
        tensors = _tensors(base.header, base.data)
        m = _copy(base.manifest)
        which = self.pick.choice(["drop", "add-unknown", "add-copy"])
        t = self._tensor(base)
        if which == "drop":
            tensors = [x for x in tensors if x[0] != t]
            del m["tensors"][t]
            code = "missing_tensor"
        else:
            src = next(x for x in tensors if x[0] == t)
            name = "model.layers.9.mlp.up_proj" + (".weight" if base.kind == "merged" else ".lora_A")
            if which == "add-copy":
                name = t + ".copy"
            tensors.append((name, src[1], src[2], src[3]))
            m["tensors"][name] = dict(m["tensors"][t], param=name if which == "add-unknown" and base.kind == "merged"
                                      else ("model.layers.9.mlp.up_proj.weight" if which == "add-unknown" else m["tensors"][t]["param"]))
            code = "extra_tensor"
        entries, data = _layout(tensors)
        h = {"__metadata__": base.header["__metadata__"], **entries}
        return self._case(base, "tensor_set", header=h, manifest=m, data=data, codes={code})

    def values(self, base):
        """A float value in a tensor's data (manifest digest updated, re-signed)."""
        m = _copy(base.manifest)
        t = self._tensor(base)
        spec = base.header[t]
        b, e = spec["data_offsets"]
        dt = spec["dtype"]
        n = (e - b) // ESIZE[dt]
        i = self.pick.integer(0, n - 1)
        if dt == "F16":
            v = self.pick.choice(["nan", "inf", "-inf", "max", "-max"])
        else:
            v = self.pick.choice(["nan", "inf", "-inf", "max", "-max", "above", "1e38", "-3e38", "70000"])
        x = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf, "max": 65504.0, "-max": -65504.0,
             "above": 65504.0078125, "1e38": 1e38, "-3e38": -3e38, "70000": 70000.0}[v]
        fmt_ = {"F32": "<f", "F16": "<e"}[dt]
        data = bytearray(base.data)
        struct.pack_into(fmt_, data, b + i * ESIZE[dt], x)
        m["tensors"][t]["sha256"] = hashlib.sha256(bytes(data[b:e])).hexdigest()
        return self._case(base, "values", manifest=m, data=bytes(data), codes={None if v in ("max", "-max") else "values"})


FAMILIES = ("identity", "signature_rule", "manifest_drop", "manifest_type", "manifest_add", "manifest_value",
            "header_entry", "metadata", "offsets", "tensor_set", "values")


class RandomPick:
    """Seeded choices (make_golden.py)."""

    def __init__(self, rnd):
        self.rnd = rnd

    def choice(self, seq):
        return seq[self.rnd.randrange(len(seq))]

    def integer(self, lo, hi):
        return self.rnd.randint(lo, hi)
