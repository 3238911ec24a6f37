import Foundation
import XCTest
@testable import LoRAGenKit

/// On-device requantization (Quant.swift) against tests/golden/quant/ (Kotlin twin: QuantTest.kt):
/// every part, dequantized value, merged value and requantized part byte for byte, for all nine
/// encodings.
final class QuantTests: XCTestCase {
    struct Vectors {
        let enc: QuantEncoding
        let f: SafetensorsFile
        let outF: Int
        let inF: Int
        let r: Int
        let loraScale: Double
        let w: [Float]
        let a: [Float]
        let b: [Float]
        let q: Data
        let scale: Data

        func data(_ name: String) -> Data { f.tensorData(name)! }
        func floats(_ name: String) throws -> [Float] { try LoraMerge.toFloats(data(name), .F32) }
    }

    static func f32Data(_ v: [Float]) -> Data {
        var d = Data(capacity: v.count * 4)
        for x in v { withUnsafeBytes(of: x.bitPattern.littleEndian) { d.append(contentsOf: $0) } }
        return d
    }

    static func vectors(_ id: String) throws -> Vectors {
        let f = try Golden.safetensors("quant/\(id).safetensors")
        let meta = f.header.obj("__metadata__")!
        XCTAssertEqual(meta.str("encoding"), id)
        let w = f.tensors[JSONString("w")]!
        let a = f.tensors[JSONString("lora_A")]!
        return Vectors(enc: try Quant.get(id), f: f, outF: w.shape[0], inF: w.shape[1], r: a.shape[0],
                       loraScale: Double(meta.str("lora_scale")!)!,
                       w: try LoraMerge.toFloats(f.tensorData("w")!, .F32),
                       a: try LoraMerge.toFloats(f.tensorData("lora_A")!, .F32),
                       b: try LoraMerge.toFloats(f.tensorData("lora_B")!, .F32),
                       q: f.tensorData("q")!, scale: f.tensorData("scale")!)
    }

    func testIndexListsTheNineEncodings() throws {
        guard case .object(let index) = try JSON.parse(String(decoding: try Golden.bytes("quant/index.json"), as: UTF8.self)) else {
            return XCTFail("quant/index.json is not an object")
        }
        let encs = index.obj("encodings")!
        XCTAssertEqual(encs.entries.map { $0.key.string }.sorted(), Quant.known.sorted())
        for id in Quant.known {
            let e = encs.obj(id)!
            XCTAssertEqual(e.str("file"), "quant/\(id).safetensors")
            XCTAssertEqual(Hex.sha256(try Golden.bytes("quant/\(id).safetensors")), e.str("sha256"))
            let v = try Self.vectors(id)
            let shapes = try v.enc.partShapes(v.outF, v.inF)
            XCTAssertEqual(v.f.tensors[JSONString("q")]!.shape, shapes["q"])
            XCTAssertEqual(v.f.tensors[JSONString("scale")]!.shape, shapes["scale"])
            XCTAssertEqual(v.f.tensors[JSONString("q")]!.dtype, v.enc.qDType)
            XCTAssertEqual(v.f.tensors[JSONString("scale")]!.dtype, v.enc.scaleDType)
            XCTAssertEqual(DType.stName(e.str("q_dtype")!), v.enc.qDType.rawValue)
            XCTAssertEqual(DType.stName(e.str("scale_dtype")!), v.enc.scaleDType.rawValue)
        }
    }

    func testQuantizeIsBitExact() throws {
        for id in Quant.known {
            let v = try Self.vectors(id)
            let parts = try v.enc.quantize(v.w, outF: v.outF, inF: v.inF)
            XCTAssertEqual(parts.q, v.q, "\(id) q")
            XCTAssertEqual(parts.scale, v.scale, "\(id) scale")
        }
    }

    func testDequantizeIsBitExact() throws {
        for id in Quant.known {
            let v = try Self.vectors(id)
            let d = try v.enc.dequantize(q: v.q, scale: v.scale, outF: v.outF, inF: v.inF)
            XCTAssertEqual(Self.f32Data(d), v.data("dequantized"), "\(id) dequantized")
        }
    }

    func testDeviceMergeIsBitExact() throws {
        for id in Quant.known {
            let v = try Self.vectors(id)
            let m = try Quant.deviceMerge(w: try v.floats("dequantized"), a: v.a, b: v.b, r: v.r, scale: v.loraScale)
            XCTAssertEqual(Self.f32Data(m), v.data("merged"), "\(id) merged")
        }
    }

    func testRequantizeIsBitExact() throws {
        for id in Quant.known {
            let v = try Self.vectors(id)
            let parts = try Quant.requantize(v.enc, q: v.q, scale: v.scale, outF: v.outF, inF: v.inF,
                                             a: v.a, b: v.b, r: v.r, loraScale: v.loraScale)
            XCTAssertEqual(parts.q, v.data("requant_q"), "\(id) requant_q")
            XCTAssertEqual(parts.scale, v.data("requant_scale"), "\(id) requant_scale")
            XCTAssertNotEqual(parts.q, v.q, "\(id): the LoRA moves codes")
            let again = try v.enc.quantize(try v.floats("merged"), outF: v.outF, inF: v.inF)
            XCTAssertEqual(again.q, parts.q)
            XCTAssertEqual(again.scale, parts.scale)
        }
    }

    func testZeroLoraRequantizesOrtAndCoreMlUnchanged() throws {
        for id in Quant.known {
            let v = try Self.vectors(id)
            let zeroB = [Float](repeating: 0, count: v.b.count)
            let parts = try Quant.requantize(v.enc, q: v.q, scale: v.scale, outF: v.outF, inF: v.inF,
                                             a: v.a, b: zeroB, r: v.r, loraScale: v.loraScale)
            if v.enc.family == "xnnpack" {
                XCTAssertTrue(parts.q != v.q || parts.scale != v.scale, id)
            } else {
                XCTAssertEqual(parts.q, v.q, "\(id) q")
                XCTAssertEqual(parts.scale, v.scale, "\(id) scale")
            }
        }
    }

    func testUnknownEncodingsAndBadShapesAreRefused() throws {
        for id in ["", "xnnpack-int4-g64", "ort-int4-pc", "coreml-int8-b32", "int4", "XNNPACK-int4-g32", "ort-int2-b32"] {
            expectCode("encoding") { _ = try Quant.get(id) }
        }
        let enc = try Quant.get("ort-int4-b32")
        expectCode("encoding") { _ = try enc.quantize([Float](repeating: 0, count: 96), outF: 2, inF: 48) }
        expectCode("encoding") { _ = try enc.quantize([Float](repeating: 0, count: 10), outF: 2, inF: 64) }
        expectCode("encoding") { _ = try enc.dequantize(q: Data(count: 64), scale: Data(count: 7), outF: 2, inF: 64) }
        expectCode("encoding") { _ = try enc.dequantize(q: Data(count: 63), scale: Data(count: 16), outF: 2, inF: 64) }
        XCTAssertEqual(ErrorCode.encoding.rawValue, "encoding")
    }

    func testMergesBeyondTheValueBoundAreRefused() throws {
        let v = try Self.vectors("ort-int8-b32")
        let bigB = [Float](repeating: 1e6, count: v.b.count)
        expectCode("merge") {
            _ = try Quant.requantize(v.enc, q: v.q, scale: v.scale, outF: v.outF, inF: v.inF, a: v.a, b: bigB, r: v.r, loraScale: v.loraScale)
        }
        var nanB = v.b
        nanB[3] = .nan
        expectCode("merge") {
            _ = try Quant.requantize(v.enc, q: v.q, scale: v.scale, outF: v.outF, inF: v.inF, a: v.a, b: nanB, r: v.r, loraScale: v.loraScale)
        }
        expectCode("build") { _ = try Quant.deviceMerge(w: v.w, a: v.a, b: Array(v.b.dropLast()), r: v.r, scale: 1) }
    }
}
