import CryptoKit
import Foundation
import XCTest
@testable import LoRAGenKit

/// Every vector of tests/golden/expected.json, as the Python reference and the Kotlin core see it
/// (the Kotlin twin is android_demo/core/src/test/kotlin/dev/loragen/core/GoldenTest.kt).
final class GoldenTests: XCTestCase {
    func testAllSeventeenVectorsArePresent() throws {
        let listed = ["coreml-lora", "coreml-merged", "duplicate-names", "executorch-lora", "executorch-merged", "non-utf8-header",
                      "onnx-lora", "onnx-merged", "other-backend", "oversized-header-length", "short", "tampered-data",
                      "tampered-header", "truncated", "truncated-data", "unsigned", "wrong-key"]
        XCTAssertEqual(try Golden.bundles().keys.map { $0.string }.sorted(), listed)
        XCTAssertEqual(Golden.vectorNames, listed)
        // every path expected.json names is one the Swift tests may read
        for n in listed {
            let e = try Golden.entry(n)
            for k in ["artifact", "base", "expected"] {
                if let p = e.str(k) { XCTAssertTrue(GoldenFiles.all.contains(p), "\(n).\(k) = \(p)") }
            }
        }
        XCTAssertEqual(GoldenFiles.all.count, 33)
        XCTAssertEqual(Set(GoldenFiles.all).count, GoldenFiles.all.count)
    }

    func testFileSha256AndSize() throws {
        for n in Golden.vectorNames {
            let e = try Golden.entry(n)
            let raw = try Golden.bundle(n)
            XCTAssertEqual(e["size"]?.intValue, raw.count, n)
            XCTAssertEqual(e.str("sha256"), Hex.sha256(raw), n)
        }
    }

    func testSigningDigests() throws {
        var computed = 0
        for n in Golden.vectorNames {
            let want = try Golden.entry(n).str("signing_digest")
            var got: String?
            do {
                got = Hex.encode(try ParsedBundle.parse(ByteSource.of(try Golden.bundle(n))).signingDigest())
            } catch is BundleError {
                got = nil
            }
            XCTAssertEqual(got, want, n)
            if got != nil { computed += 1 }
        }
        XCTAssertEqual(computed, 11)
    }

    func testVerdictsCodesAndMessagesFromMemory() throws {
        for n in Golden.vectorNames { try checkVerdict(n) { ByteSource.of(try Golden.bundle(n)) } }
    }

    func testVerdictsCodesAndMessagesFromMappedFiles() throws {
        // the app's path: Data(contentsOf:options: .alwaysMapped), never a whole-file read
        for n in Golden.vectorNames { try checkVerdict(n) { try ByteSource.open(try Golden.bundleURL(n)) } }
    }

    private func checkVerdict(_ n: String, _ source: () throws -> ByteSource) throws {
        let e = try Golden.entry(n)
        let art = try Golden.artifactFor(n)
        let key = try Golden.publicKey()
        do {
            _ = try BundleVerifier.verify(try source(), artifact: art, publicKey: key)
            XCTAssertEqual(e.str("verdict"), "valid", "\(n) should be rejected")
        } catch let err as BundleError {
            XCTAssertEqual(e.str("verdict"), "rejected", "\(n) should verify, got \(err)")
            XCTAssertEqual(err.code, e.str("code"), n)
            // the one-line message is the Python reference's, character for character
            XCTAssertEqual(err.message, e.str("message"), n)
        }
    }

    func testKeyRequiredWrongKeyAndUnsignedPolicy() throws {
        let art = try Golden.artifact("executorch")
        let valid = try Golden.bundle("executorch-merged")
        expectCode("key_required") { _ = try verify(valid, art, nil) }
        expectCode("bad_signature") { _ = try verify(valid, art, try Golden.otherKey()) }
        // the bundle signed with the other key verifies with that key
        XCTAssertNoThrow(try verify(try Golden.bundle("wrong-key"), art, try Golden.otherKey()))
        // an unsigned bundle passes only when the caller does not require a signature
        XCTAssertNoThrow(try verify(try Golden.bundle("unsigned"), art, nil, requireSignature: false))
        expectCode("key_required") { _ = try verify(try Golden.bundle("unsigned"), art, nil) }
        // a bundle that carries a signature is always verified: admitting unsigned bundles does not
        // let a signed one through without its key, nor one whose signature is bad
        expectCode("key_required") { _ = try verify(try Golden.bundle("tampered-data"), art, nil, requireSignature: false) }
        expectCode("bad_signature") {
            _ = try verify(try Golden.bundle("tampered-data"), art, try Golden.publicKey(), requireSignature: false)
        }
        XCTAssertTrue(try verify(valid, art, try Golden.publicKey(), requireSignature: false).signatureVerified)
        XCTAssertFalse(try verify(try Golden.bundle("unsigned"), art, nil, requireSignature: false).signatureVerified)
        // the golden artifact of another backend refuses the bundle
        expectCode("backend") { _ = try verify(valid, try Golden.artifact("onnx"), try Golden.publicKey()) }
    }

    func testKeyIdMatchesManifest() throws {
        let key = try Golden.publicKey()
        XCTAssertEqual(Ed25519.keyId(key), "5cb5ae72633d406d")
        for n in ["executorch-merged", "onnx-lora", "coreml-merged"] {
            XCTAssertEqual(try BundleWriter.manifestOf(try Golden.bundle(n)).str("key_id"), Ed25519.keyId(key))
        }
        // the test signing key is the private half of public_key.pem
        XCTAssertEqual(try Golden.signingKey().publicKey.rawRepresentation, key.rawRepresentation)
    }

    func testSwapPlansMatchExpected() throws {
        var checked = 0
        for n in Golden.vectorNames {
            let e = try Golden.entry(n)
            if e.str("verdict") != "valid" { continue }
            let vb = try verify(try Golden.bundle(n), try Golden.artifactFor(n), try Golden.publicKey())
            XCTAssertEqual(vb.kind, e.str("kind"), n)
            let base = BaseValues.fromSafetensors(try Golden.safetensors(e.str("base")!))
            let plan = try SwapPlan.build(vb, base: base)
            let want = e.obj("swap_plan")!
            XCTAssertEqual(plan.map { $0.param.string }, want.keys.map { $0.string }, n)
            let expected = try Golden.safetensors(e.str("expected")!)
            let exact = PyJSON.equals(e["tolerance"], .double(0)) && vb.kind == "merged"
            for t in plan {
                let w = want[t.param]!.objectValue!
                var loc = w
                loc["sha256"] = nil
                XCTAssertTrue(PyJSON.equals(.object(loc), .object(t.locator)), "\(n) \(t.param.string) locator")
                let et = expected.tensors[t.param]!
                XCTAssertEqual(et.dtype, t.dtype)
                XCTAssertEqual(et.shape, t.shape)
                if exact || n == "coreml-lora" {
                    // merged bundles: the bytes themselves; coreml-lora: the fp16 on-device merge equals
                    // Python's host merge bit for bit on these vectors
                    XCTAssertEqual(t.sha256(), w.str("sha256"), "\(n) \(t.param.string)")
                    XCTAssertEqual(t.data.byteArray, expected.tensorData(t.param)!.byteArray, "\(n) \(t.param.string)")
                }
            }
            if vb.kind == "lora" && n != "coreml-lora" {
                // fp32 lora: element by element within the documented fp32 rounding bound
                let worst = try MergeTests.assertWithinBound(n, vb, plan, base, expected)
                XCTAssertLessThanOrEqual(worst, 1.0, n)
            }
            checked += 1
        }
        XCTAssertEqual(checked, 6)
    }

    func testOnnxPlanAddressesInitializersAndOffsets() throws {
        let vb = try verify(try Golden.bundle("onnx-merged"), try Golden.artifact("onnx"), try Golden.publicKey())
        let plan = try SwapPlan.build(vb)
        XCTAssertEqual(plan.count, 6)
        let byParam = Dictionary(uniqueKeysWithValues: plan.map { ($0.param.string, $0) })
        XCTAssertEqual(byParam["model.layers.0.mlp.up_proj.weight"]?.key, "model.layers.0.mlp.up_proj.weight")
        XCTAssertEqual(byParam["model.layers.0.mlp.up_proj.weight"]?.file, "swap.onnx.data")
        XCTAssertEqual(byParam["model.layers.0.mlp.up_proj.weight"]?.offset, 512)
        XCTAssertEqual(byParam["model.layers.0.mlp.gate_proj.weight"]?.offset, 0)
        for t in plan { XCTAssertEqual(t.key, t.param.string) }
        // a lora bundle cannot be swapped without the base values
        let lora = try verify(try Golden.bundle("onnx-lora"), try Golden.artifact("onnx"), try Golden.publicKey())
        expectCode("build") { _ = try SwapPlan.build(lora, base: nil) }
    }

    func testCoreMLPlanKeepsHeaderOffsets() throws {
        let vb = try verify(try Golden.bundle("coreml-merged"), try Golden.artifact("coreml"), try Golden.publicKey())
        let t = try SwapPlan.build(vb).first(where: { $0.param.string == "model.layers.0.mlp.down_proj.weight" })!
        XCTAssertEqual(t.offset, 768)
        XCTAssertEqual(t.headerOffset, 704)
        XCTAssertEqual(t.key, "p_model_layers_0_mlp_down_proj_weight")
        XCTAssertEqual(t.file, "model.mlpackage/Data/com.apple.CoreML/weights/weight.bin")
        XCTAssertEqual(t.dtype, .F16)
        XCTAssertEqual(t.nbytes, 256)
    }

    func testVerifiedParamsAndKinds() throws {
        let vb = try verify(try Golden.bundle("executorch-lora"), try Golden.artifact("executorch"), try Golden.publicKey())
        XCTAssertEqual(vb.kind, "lora")
        XCTAssertEqual(vb.params.map { $0.string }, [
            "model.layers.0.mlp.down_proj.weight", "model.layers.0.mlp.gate_proj.weight", "model.layers.0.mlp.up_proj.weight",
            "model.layers.1.mlp.down_proj.weight", "model.layers.1.mlp.gate_proj.weight", "model.layers.1.mlp.up_proj.weight",
        ])
        XCTAssertTrue(PyJSON.equals(vb.lora?["r"], .int(4)))
        XCTAssertTrue(PyJSON.equals(vb.lora?["alpha"], .double(8)))
        XCTAssertTrue(PyJSON.equals(vb.lora?["scale"], .double(2)))
        XCTAssertEqual(vb.parsed.tensors.count, 12)
    }
}
