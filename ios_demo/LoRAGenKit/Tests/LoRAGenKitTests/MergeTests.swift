import Foundation
import XCTest
@testable import LoRAGenKit

/// The on-device merge of lora bundles (Kotlin twin: MergeTest.kt).
final class MergeTests: XCTestCase {
    static let u32 = 1.0 / Double(1 << 24) // unit roundoff of fp32 (2^-24)

    static func f32(_ v: Float...) -> Data {
        var d = Data()
        for x in v { withUnsafeBytes(of: x.bitPattern.littleEndian) { d.append(contentsOf: $0) } }
        return d
    }

    static func f16(_ v: Float...) -> Data {
        var d = Data()
        for x in v { withUnsafeBytes(of: Fp16.fromFloat(x).littleEndian) { d.append(contentsOf: $0) } }
        return d
    }

    static func floats(_ d: Data, _ t: DType) throws -> [Float] { try LoraMerge.toFloats(d, t) }

    /// For an fp32 lora bundle: every merged element is within
    /// (r + 2) * 2^-24 * (|W| + |scale| * sum_k |B[i,k]| |A[k,j]|) of Python's host merge, and within
    /// (r + 1) * 2^-24 * (...) of the exact value computed in fp64. Returns the largest error / bound.
    static func assertWithinBound(_ n: String, _ vb: VerifiedBundle, _ plan: [SwapTensor], _ base: BaseValues,
                                  _ expected: SafetensorsFile) throws -> Double {
        let lora = vb.lora!
        let r = Int(lora["r"]!.number!)
        let scale = Float(lora["alpha"]!.number! / Double(r))
        let slots = try vb.artifact.slotsByParam().slots
        var worst = 0.0
        var exactCount = 0
        var total = 0
        for t in plan {
            let module = BundleVerifier.moduleOf(t.param)
            let w = try floats(try base.get(t.param, slots[t.param]!)!, .F32)
            let a = try floats(vb.parsed.container.tensorData(module.appending(".lora_A"))!, .F32)
            let b = try floats(vb.parsed.container.tensorData(module.appending(".lora_B"))!, .F32)
            let mine = try floats(t.data, .F32)
            let py = try floats(expected.tensorData(t.param)!, .F32)
            let outF = t.shape[0]
            let inF = t.shape[1]
            for i in 0..<outF {
                for j in 0..<inF {
                    var mag = 0.0
                    var exact = 0.0
                    for k in 0..<r {
                        mag += abs(Double(b[i * r + k]) * Double(a[k * inF + j]))
                        exact += Double(b[i * r + k]) * Double(a[k * inF + j])
                    }
                    let idx = i * inF + j
                    mag = abs(Double(w[idx])) + abs(Double(scale)) * mag
                    exact = Double(w[idx]) + Double(scale) * exact
                    let bound = Double(r + 2) * u32 * mag
                    let err = abs(Double(mine[idx]) - Double(py[idx]))
                    XCTAssertLessThanOrEqual(err, bound, "\(n) \(t.param.string)[\(i),\(j)]: swift \(mine[idx]) python \(py[idx])")
                    XCTAssertLessThanOrEqual(abs(Double(mine[idx]) - exact), Double(r + 1) * u32 * mag, "\(n) \(t.param.string)[\(i),\(j)] vs fp64")
                    if bound > 0 { worst = Swift.max(worst, err / bound) }
                    if mine[idx] == py[idx] { exactCount += 1 }
                    total += 1
                }
            }
        }
        // the Kotlin core, with the same arithmetic, measured 405/768 (executorch-lora) and
        // 427/768 (onnx-lora) elements bit-identical to Python's fp64 merge
        print("  \(n): \(exactCount)/\(total) elements bit-identical to Python's merge; worst |diff| = \(worst) of the bound")
        return worst
    }

    func testSmallExactMergeFp32() throws {
        // W 2x2, r = 1: W + 2 * B @ A with A = [0.5, 0.25], B = [2, 4]^T
        let out = try LoraMerge.merge(param: "w", dtype: .F32, wShape: [2, 2], w: Self.f32(1, 2, 3, 4), a: Self.f32(0.5, 0.25),
                                      b: Self.f32(2, 4), scale: 2)
        XCTAssertEqual(try Self.floats(out, .F32), [3, 3, 7, 6])
    }

    func testSmallExactMergeFp16() throws {
        let out = try LoraMerge.merge(param: "w", dtype: .F16, wShape: [2, 2], w: Self.f16(1, 2, 3, 4), a: Self.f16(0.5, 0.25),
                                      b: Self.f16(2, 4), scale: 2)
        XCTAssertEqual(out.count, 8)
        XCTAssertEqual(try Self.floats(out, .F16), [3, 3, 7, 6])
    }

    func testFp16RoundsOnceToNearestEven() throws {
        // 2048 + 2 * 0.5 = 2049: halfway between fp16 2048 and 2050 -> even (2048); 2048 + 3 -> 2052
        let a = try LoraMerge.merge(param: "w", dtype: .F16, wShape: [1, 1], w: Self.f16(2048), a: Self.f16(0.5), b: Self.f16(1), scale: 2)
        XCTAssertEqual(try Self.floats(a, .F16), [2048])
        let b = try LoraMerge.merge(param: "w", dtype: .F16, wShape: [1, 1], w: Self.f16(2048), a: Self.f16(1.5), b: Self.f16(1), scale: 2)
        XCTAssertEqual(try Self.floats(b, .F16), [2052])
    }

    func testDefinedAccumulationOrder() throws {
        // acc = fma(B[k], A[k], acc) for k = 0, 1, 2 from 0: 1e8, then 1e8 + 1 rounds to 1e8, then 0
        let out = try LoraMerge.merge(param: "w", dtype: .F32, wShape: [1, 1], w: Self.f32(5), a: Self.f32(1e8, 1, -1e8),
                                      b: Self.f32(1, 1, 1), scale: 2)
        XCTAssertEqual(try Self.floats(out, .F32), [5])
        // the final step is one fused multiply-add: 1 + 3 * (1/3 as float) rounds once
        let third: Float = 1.0 / 3.0
        let one = try LoraMerge.merge(param: "w", dtype: .F32, wShape: [1, 1], w: Self.f32(1), a: Self.f32(third), b: Self.f32(1), scale: 3)
        let fused = Float(1).addingProduct(3, third)
        XCTAssertEqual(try Self.floats(one, .F32), [fused])
        // addingProduct is fused: x * x = 1 + 2^-11 + 2^-24 is not rounded before the add
        let x: Float = 1 + 1.0 / 4096
        let c: Float = -(1 + 1.0 / 2048)
        XCTAssertEqual(c.addingProduct(x, x), Float(1.0 / 16_777_216.0))
        let product = x * x // rounded: the 2^-24 is a tie, to even
        XCTAssertEqual(product + c, 0)
    }

    func testRefusesOverflowAndNaN() throws {
        // fp16: 65504 + 16 = 65520 is beyond the finite range (Python refuses it before rounding)
        expectCode("merge") {
            _ = try LoraMerge.merge(param: "w", dtype: .F16, wShape: [1, 1], w: Self.f16(65504), a: Self.f16(8), b: Self.f16(1), scale: 2)
        }
        XCTAssertNoThrow(try LoraMerge.merge(param: "w", dtype: .F16, wShape: [1, 1], w: Self.f16(65504), a: Self.f16(0), b: Self.f16(1), scale: 2))
        expectCode("merge") {
            _ = try LoraMerge.merge(param: "w", dtype: .F32, wShape: [1, 1], w: Self.f32(3e38), a: Self.f32(3e38), b: Self.f32(1), scale: 2)
        }
        expectCode("merge") {
            _ = try LoraMerge.merge(param: "w", dtype: .F32, wShape: [1, 1], w: Self.f32(.nan), a: Self.f32(0), b: Self.f32(0), scale: 2)
        }
        expectCode("build") {
            _ = try LoraMerge.merge(param: "w", dtype: .F32, wShape: [2, 2], w: Self.f32(1, 2, 3), a: Self.f32(0, 0), b: Self.f32(0, 0), scale: 2)
        }
        expectCode("build") {
            _ = try LoraMerge.merge(param: "w", dtype: .I8, wShape: [1, 1], w: Data([0]), a: Data([0]), b: Data([0]), scale: 2)
        }
    }

    func testFp16LoraOnDeviceWithinDocumentedBoundOfMergedBundle() throws {
        // coreml (fp16): the lora bundle's factors are rounded to fp16, the merged bundle was merged
        // from fp32 factors; docs/bundle-format.md bounds the difference per element by
        // 2 eps16 * scale * (|B| @ |A|) + eps16 * |W'| with eps16 = 2^-10
        let art = try Golden.artifact("coreml")
        let key = try Golden.publicKey()
        let base = BaseValues.fromSafetensors(try Golden.safetensors("base/coreml.safetensors"))
        let vb = try verify(try Golden.bundle("coreml-lora"), art, key)
        let lora = try SwapPlan.build(vb, base: base)
        let merged = try SwapPlan.build(try verify(try Golden.bundle("coreml-merged"), art, key))
        XCTAssertEqual(lora.map { $0.param }, merged.map { $0.param })
        let eps16 = 1.0 / 1024.0
        var differing = 0
        for (x, y) in zip(lora, merged) {
            let module = BundleVerifier.moduleOf(x.param)
            let a = try Self.floats(vb.parsed.container.tensorData(module.appending(".lora_A"))!, .F16)
            let b = try Self.floats(vb.parsed.container.tensorData(module.appending(".lora_B"))!, .F16)
            let mine = try Self.floats(x.data, .F16)
            let server = try Self.floats(y.data, .F16)
            let outF = x.shape[0]
            let inF = x.shape[1]
            let r = a.count / inF
            for i in 0..<outF {
                for j in 0..<inF {
                    var ab = 0.0
                    for k in 0..<r { ab += abs(Double(b[i * r + k]) * Double(a[k * inF + j])) }
                    let idx = i * inF + j
                    let bound = 2 * eps16 * 2.0 * ab + eps16 * abs(Double(server[idx]))
                    XCTAssertLessThanOrEqual(abs(Double(mine[idx]) - Double(server[idx])), bound, "\(x.param.string)[\(i),\(j)]")
                    if mine[idx] != server[idx] { differing += 1 }
                }
            }
        }
        XCTAssertGreaterThan(differing, 0) // the factor rounding is visible: the two kinds are not bit-identical
    }

    func testFp32LoraWithinBoundOfPython() throws {
        for (n, backend) in [("executorch-lora", "executorch"), ("onnx-lora", "onnx")] {
            let vb = try verify(try Golden.bundle(n), try Golden.artifact(backend), try Golden.publicKey())
            let base = BaseValues.fromSafetensors(try Golden.safetensors("base/\(backend).safetensors"))
            let plan = try SwapPlan.build(vb, base: base)
            XCTAssertEqual(plan.count, 6)
            let worst = try Self.assertWithinBound(n, vb, plan, base, try Golden.safetensors("expected/merged-\(n).safetensors"))
            XCTAssertLessThanOrEqual(worst, 1.0)
        }
    }

    func testStreamingEqualsEagerPlan() throws {
        let vb = try verify(try Golden.bundle("executorch-lora"), try Golden.artifact("executorch"), try Golden.publicKey())
        let base = BaseValues.fromSafetensors(try Golden.safetensors("base/executorch.safetensors"))
        var streamed: [String] = []
        try SwapPlan.forEach(vb, base: base) { streamed.append($0.param.string + ":" + $0.sha256()) }
        XCTAssertEqual(streamed, try SwapPlan.build(vb, base: base).map { $0.param.string + ":" + $0.sha256() })
    }
}
