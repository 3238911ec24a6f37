import CryptoKit
import Foundation
import XCTest
@testable import LoRAGenKit

/// One precise defect per check of docs/bundle-format.md, built from a valid golden bundle and
/// re-signed with the golden test key so that the check under test is the first to fail: the same
/// cases as the Kotlin core's VerifyErrorsTest.kt, whose verdicts were cross-checked against Python.
final class VerifyErrorsTests: XCTestCase {
    private var merged = Data()
    private var loraRaw = Data()
    private var art: Artifact!
    private var tensors: [BundleWriter.T] = []
    private var manifest = JSONObject()
    private var key: Curve25519.Signing.PublicKey!
    private let first = "model.layers.0.mlp.down_proj.weight"

    override func setUpWithError() throws {
        merged = try Golden.bundle("executorch-merged")
        loraRaw = try Golden.bundle("executorch-lora")
        art = try Golden.artifact("executorch")
        tensors = try BundleWriter.tensorsOf(merged)
        manifest = try BundleWriter.manifestOf(merged)
        key = try Golden.publicKey()
    }

    private func check(_ name: String, _ code: String?, _ raw: Data, key useKey: Bool = true, artifact: Artifact? = nil,
                       requireSig: Bool = true, file: StaticString = #filePath, line: UInt = #line) throws {
        let got = try codeOf {
            _ = try BundleVerifier.verify(ByteSource.of(raw), artifact: artifact ?? art, publicKey: useKey ? key : nil,
                                          requireSignature: requireSig)
        }
        XCTAssertEqual(got, code, "case \(name)", file: file, line: line)
    }

    private func rebuild(_ man: Any? = nil, ts: [BundleWriter.T]? = nil, sign: Bool = true, headerText: ((String) -> String)? = nil,
                         metaExtra: [String: JSONValue] = [:], spec: [String: JSONValue] = [:]) throws -> Data {
        try BundleWriter.assemble(ts ?? tensors, manifest: man ?? manifest, sign: sign, metaExtra: metaExtra,
                                  headerText: headerText, specOverride: spec)
    }

    private func spec(_ dtype: JSONValue, _ shape: JSONValue, _ offs: JSONValue, extra: [(String, JSONValue)] = []) -> JSONValue {
        .object(JSONObject([("dtype", dtype), ("shape", shape), ("data_offsets", offs)] + extra))
    }

    private func ints(_ v: Int64...) -> JSONValue { .array(v.map { JSONValue.int($0) }) }

    private func len(_ n: UInt64) -> Data {
        var v = n.littleEndian
        return withUnsafeBytes(of: &v) { Data($0) }
    }

    private func replacingFirst(_ s: String, _ a: String, _ b: String) -> String {
        guard let r = s.range(of: a) else { return s }
        return s.replacingCharacters(in: r, with: b)
    }

    private func m(_ path: [String], _ value: JSONValue?) -> JSONObject { setting(manifest, path, value) }

    func testRebuiltValidBundleEqualsPythonsBytes() throws {
        // the unsigned rebuild is Python's file with the signature zeroed: its sha256 is the signing digest
        let e = try Golden.entry("executorch-merged")
        XCTAssertEqual(Hex.sha256(try rebuild(sign: false)), e.str("signing_digest"))
        let le = try Golden.entry("executorch-lora")
        let lt = try BundleWriter.tensorsOf(loraRaw)
        XCTAssertEqual(Hex.sha256(try BundleWriter.assemble(lt, manifest: try BundleWriter.manifestOf(loraRaw), sign: false)),
                       le.str("signing_digest"))
        // and signed with the golden key it verifies
        try check("valid-rebuilt", nil, try rebuild())
        XCTAssertEqual(try rebuild().count, merged.count)
    }

    func testContainerChecks() throws {
        try check("empty", "truncated", Data())
        try check("seven-bytes", "truncated", Data(count: 7))
        try check("zero-header", "header_json", len(0))
        try check("huge-length", "header_length", len(UInt64.max) + Data(count: 8))
        try check("over-16mib", "header_length", len(16 * 1024 * 1024 + 8) + Data(repeating: 0x20, count: 16 * 1024 * 1024 + 8))
        try check("bad-utf8-continuation", "header_encoding", len(8) + Data([0x7B, 0x22, 0x61, 0x22, 0x3A, 0xE9, 0x7D, 0x00]))
        try check("utf8-surrogate", "header_encoding", len(8) + Data([0x22, 0xED, 0xA0, 0x80, 0x22, 0x20, 0x20, 0x20]))
        try check("overlong-utf8", "header_encoding", len(8) + Data([0x22, 0xC0, 0xAF, 0x22, 0x20, 0x20, 0x20, 0x20]))
        try check("header-array", "header_json", len(8) + Data("[]      ".utf8))
        try check("header-not-json", "header_json", len(8) + Data("{\"a\":   ".utf8))
        try check("nul-padding", "header_json", len(8) + Data("{}".utf8) + Data(count: 6))
        try check("nested-dup", "duplicate_name", try rebuild(headerText: { self.replacingFirst($0, "{\"dtype\"", "{\"dtype\":\"F32\",\"dtype\"") }))
    }

    func testMetadataAndSignatureField() throws {
        let zeros = String(repeating: "0", count: 128)
        try check("no-metadata", "metadata", try rebuild(headerText: { self.replacingFirst($0, "\"__metadata__\"", "\"__metadata_x\"") }))
        try check("metadata-number", "metadata", try rebuild(metaExtra: ["other": .int(1)]))
        try check("sig-uppercase", "signature_field", try rebuild(sign: false, headerText: {
            $0.replacingOccurrences(of: "\"\(zeros)\"", with: "\"\(String(repeating: "A", count: 128))\"")
        }))
        try check("sig-short", "signature_field", try rebuild(sign: false, headerText: {
            $0.replacingOccurrences(of: "\"\(zeros)\"", with: "\"\(String(repeating: "0", count: 127))\"")
        }))
        // JSON-equivalent spacing moves the needle: the signature field is no longer found verbatim
        let spaced = try rebuild(sign: false, headerText: {
            $0.replacingOccurrences(of: "\"loragen.signature\":\"\(zeros)\"",
                                    with: "\"loragen.signature\": \"\(String(repeating: "ab", count: 64))\"")
        })
        try check("sig-spaced", "signature_field", spaced)
        // a signed bundle is verified even when unsigned ones are admitted: without a key it is refused
        try check("sig-spaced-nokey", "key_required", spaced, key: false, requireSig: false)
    }

    func testManifestFormatVersion() throws {
        try check("manifest-not-json", "manifest", try rebuild("{not json"))
        try check("manifest-empty", "manifest", try rebuild(""))
        let text = PyJSON.dumps(.object(manifest), sortKeys: true)
        try check("manifest-dup", "duplicate_name", try rebuild(replacingFirst(text, "{", "{\"kind\":\"merged\",")))
        try check("manifest-array", "format", try rebuild("[1]"))
        try check("format-other", "format", try rebuild(m(["format"], .str("other"))))
        try check("version-2", "version", try rebuild(m(["format_version"], .int(2))))
        try check("version-string", "version", try rebuild(m(["format_version"], .str("1"))))
        // exactly the JSON integer 1: not 1.0, not true
        try check("version-float", "version", try rebuild(m(["format_version"], .double(1))))
        try check("version-true", "version", try rebuild(m(["format_version"], .bool(true))))
        try check("tensors-disagree", "manifest", try rebuild(m(["tensors", first], nil)))
        try check("tensors-not-object", "manifest", try rebuild(m(["tensors"], .array([.int(1)]))))
    }

    func testTensorHeaderAndOffsets() throws {
        let shape = ints(8, 16)
        try check("dtype-f64", "tensor_header", try rebuild(spec: [first: spec(.str("F64"), shape, ints(0, 512))]))
        try check("shape-negative", "tensor_header", try rebuild(spec: [first: spec(.str("F32"), ints(-8, -16), ints(0, 512))]))
        try check("shape-float", "tensor_header", try rebuild(spec: [first: spec(.str("F32"), .array([.double(8), .int(16)]), ints(0, 512))]))
        try check("offsets-bool", "tensor_header", try rebuild(spec: [first: spec(.str("F32"), shape, .array([.bool(false), .int(512)]))]))
        try check("spec-extra-key", "tensor_header", try rebuild(spec: [first: spec(.str("F32"), shape, ints(0, 512), extra: [("x", .int(1))])]))
        try check("offsets-size-mismatch", "data_offsets", try rebuild(spec: [first: spec(.str("F32"), ints(8, 8), ints(0, 512))]))
        try check("offsets-huge", "data_offsets", try rebuild(spec: [first: spec(.str("F32"), ints(4_611_686_018_427_387_904, 4), ints(0, 512))]))
        try check("offsets-overlap", "data_offsets", try rebuild(spec: [first: spec(.str("F32"), shape, ints(512, 1024))]))
        try check("trailing-bytes", "data_offsets", try rebuild() + Data(count: 8))
        // a zero-element tensor whose other dimension does not fit 64 bits: Python's exact ints give
        // count 0, so only the offsets decide (here: 512 bytes declared for 0 elements)
        try check("offsets-zero-dim-bigint", "data_offsets", try rebuild(spec: [first: spec(.str("F32"),
            .array([.int(0), .bigInt("100000000000000000000")]), ints(0, 512))]))
    }

    func testSignatureOutcomes() throws {
        try check("no-key", "key_required", try rebuild(), key: false)
        try check("unsigned-with-key", "unsigned", try rebuild(sign: false))
        try check("unsigned-no-key-allowed", nil, try rebuild(sign: false), key: false, requireSig: false)
        var flipped = try rebuild()
        flipped[flipped.count - 1] ^= 0x40
        try check("flipped-last-byte", "bad_signature", flipped)
        // admitting unsigned bundles never admits a signed one without its key, nor a bad signature
        try check("flipped-last-byte-nokey", "key_required", flipped, key: false, requireSig: false)
        try check("flipped-last-byte-allow", "bad_signature", flipped, requireSig: false)
    }

    func testBindingChecks() throws {
        try check("kind-delta", "kind", try rebuild(m(["kind"], .str("delta"))))
        try check("kind-missing", "kind", try rebuild(m(["kind"], nil)))
        try check("backend-onnx", "backend", try rebuild(m(["base", "backend"], .str("onnx"))))
        try check("base-not-object", "backend", try rebuild(m(["base"], .str("x"))))
        try check("fingerprint-other", "fingerprint", try rebuild(m(["base", "fingerprint"], .str(String(repeating: "0", count: 64)))))
        var noSlots = art.json
        noSlots["swap_slots"] = .array([])
        try check("artifact-without-slots", "slot", try rebuild(), artifact: Artifact(json: noSlots))
    }

    func testTensorSetChecks() throws {
        let ts = tensors.filter { $0.name != first }
        try check("missing-tensor", "missing_tensor", try rebuild(m(["tensors", first], nil), ts: ts))
        let extra = BundleWriter.T(name: "zz.extra", dtype: "F32", shape: [2], data: Data(count: 8))
        let entry = JSONObject([("param", .str("zz.extra")), ("slot", .object(JSONObject())), ("dtype", .str("F32")),
                                ("shape", ints(2)), ("sha256", .str(Hex.sha256(Data(count: 8))))])
        try check("extra-tensor", "extra_tensor", try rebuild(m(["tensors", "zz.extra"], .object(entry)), ts: tensors + [extra]))
        // lora: a missing B is missing; a wrong scale or no lora entry is a bad manifest
        let lt = try BundleWriter.tensorsOf(loraRaw)
        let lm = try BundleWriter.manifestOf(loraRaw)
        let b = "model.layers.0.mlp.up_proj.lora_B"
        try check("lora-missing-b", "missing_tensor",
                  try BundleWriter.assemble(lt.filter { $0.name != b }, manifest: setting(lm, ["tensors", b], nil)))
        try check("lora-bad-scale", "manifest", try BundleWriter.assemble(lt, manifest: setting(lm, ["lora", "scale"], .double(1))))
        try check("lora-missing-entry", "manifest", try BundleWriter.assemble(lt, manifest: setting(lm, ["lora"], nil)))
    }

    func testSlotDtypeShapeDigest() throws {
        try check("param-unknown", "slot", try rebuild(m(["tensors", first, "param"], .str("model.nope.weight"))))
        try check("slot-key-changed", "slot", try rebuild(m(["tensors", first, "slot", "key"], .str(String(repeating: "f", count: 64)))))
        try check("slot-extra-field", "slot", try rebuild(m(["tensors", first, "slot", "offset"], .int(0))))
        try check("manifest-dtype-mismatch", "manifest", try rebuild(m(["tensors", first, "dtype"], .str("F16"))))
        try check("manifest-shape-mismatch", "manifest", try rebuild(m(["tensors", first, "shape"], ints(16, 8))))
        // the same bytes declared F16 with twice the elements: consistent header and manifest, wrong dtype
        let asF16 = tensors.map { $0.name == first ? BundleWriter.T(name: $0.name, dtype: "F16", shape: [8, 32], data: $0.data) : $0 }
        let f16Manifest = setting(m(["tensors", first, "dtype"], .str("F16")), ["tensors", first, "shape"], ints(8, 32))
        try check("dtype-f16", "dtype", try rebuild(f16Manifest, ts: asF16))
        let transposed = tensors.map { $0.name == first ? BundleWriter.T(name: $0.name, dtype: "F32", shape: [16, 8], data: $0.data) : $0 }
        try check("shape-transposed", "shape", try rebuild(m(["tensors", first, "shape"], ints(16, 8)), ts: transposed))
        try check("digest-wrong", "digest", try rebuild(m(["tensors", first, "sha256"], .str(String(repeating: "0", count: 64)))))
        let sha = manifest.obj("tensors")!.obj(first)!.str("sha256")!
        try check("digest-uppercase", "digest", try rebuild(m(["tensors", first, "sha256"], .str(sha.uppercased()))))
    }
}
