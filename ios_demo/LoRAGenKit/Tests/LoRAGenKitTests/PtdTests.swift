import Foundation
import XCTest
@testable import LoRAGenKit

/// ExecuTorch `.ptd` writing and reading (Kotlin twin: PtdTest.kt).
final class PtdTests: XCTestCase {
    private var tmp: URL!

    override func setUpWithError() throws {
        tmp = FileManager.default.temporaryDirectory.appendingPathComponent("loragenkit-ptd-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: tmp, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: tmp)
    }

    private let long = String(repeating: "0123456789abcdef", count: 4)

    func testReadsFlatcWrittenFile() throws {
        // written by executorch's FlatTensorSerializer (flatc); android_demo/core/tools/make_ptd_fixture.py
        let raw = try Data(contentsOf: Golden.repoRoot.appendingPathComponent(GoldenFiles.flatcSamplePtd))
        XCTAssertEqual(raw.count, 896)
        let f = try PtdFile.read(ByteSource.of(raw))
        XCTAssertEqual(f.keys, ["first", long, "empty"])
        XCTAssertEqual(f.version, 0)
        XCTAssertEqual(f.buffer("first")?.byteArray, (1...10).map { UInt8($0) })
        XCTAssertEqual(f.buffer(long)?.byteArray, [UInt8](repeating: 0xAB, count: 200))
        XCTAssertEqual(f.buffer("empty")?.count, 0)
        XCTAssertNil(f.layout("first"))
        XCTAssertEqual(f.layout(long), TensorLayout(scalarType: 6, sizes: [10, 5], dimOrder: [0, 1]))
        XCTAssertEqual(f.segmentBaseOffset, 512) // 48 + 344 flatbuffer bytes, aligned to 128
        XCTAssertEqual(f.segments.map { [$0.offset, $0.size] }, [[0, 10], [128, 200], [384, 0]])
        XCTAssertNil(f.buffer("missing"))
    }

    func testWriterLayoutMatchesSerializer() throws {
        let entries = [
            PtdEntry(key: "first", data: Data((1...10).map { UInt8($0) })),
            PtdEntry(key: long, data: Data(repeating: 0xAB, count: 200), layout: TensorLayout(scalarType: 6, sizes: [10, 5], dimOrder: [0, 1])),
            PtdEntry(key: "empty", data: Data()),
        ]
        let raw = try PtdWriter.toData(entries)
        XCTAssertEqual(String(decoding: raw[4..<8], as: UTF8.self), "FT01")
        XCTAssertEqual(String(decoding: raw[8..<12], as: UTF8.self), "FH01")
        XCTAssertEqual(raw.u32LE(at: 12), 40)
        XCTAssertEqual(raw.u64LE(at: 16), 48) // flatbuffer_offset = padded header length, as the serializer
        let fbSize = Int(raw.u64LE(at: 24))
        let base = Int(raw.u64LE(at: 32))
        XCTAssertEqual(base % 128, 0)
        XCTAssertEqual(base, (48 + fbSize + 127) / 128 * 128)
        XCTAssertEqual(raw.u64LE(at: 40), 384) // segments at 0 (10 B), 128 (200 B), 384 (0 B)
        XCTAssertEqual(raw.count, base + 384)
        // segment data sits at base + 128 * i, zero padded
        XCTAssertEqual([UInt8](raw[base..<(base + 10)]), (1...10).map { UInt8($0) })
        XCTAssertTrue(raw[(base + 10)..<(base + 128)].allSatisfy { $0 == 0 })
        let back = try PtdFile.read(ByteSource.of(raw))
        XCTAssertEqual(back.keys, entries.map { $0.key })
        for e in entries { XCTAssertEqual(back.buffer(e.key)?.byteArray, e.data.byteArray) }
        XCTAssertEqual(back.layout(long), entries[1].layout)
        XCTAssertNil(back.layout("first"))
        // the streaming file writer produces the same bytes
        let url = tmp.appendingPathComponent("sample.ptd")
        try PtdWriter.write(entries, to: url)
        XCTAssertEqual(try Data(contentsOf: url), raw)
    }

    /// The artifact's own swap.ptd, made from the golden base values under the slots' keys.
    private func artifactSwapPtd(_ art: Artifact) throws -> URL {
        let baseFile = try Golden.safetensors("base/executorch.safetensors")
        let s = try art.slotsByParam()
        let entries = s.order.map { p in PtdEntry(key: s.slots[p]!.str("key")!, data: baseFile.tensorData(p)!) }
        let url = tmp.appendingPathComponent("swap.ptd")
        try PtdWriter.write(entries, to: url)
        return url
    }

    func testExecuTorchSwapPtdFromBundles() throws {
        let art = try Golden.artifact("executorch")
        let key = try Golden.publicKey()
        let base = BaseValues.fromSafetensors(try Golden.safetensors("base/executorch.safetensors"))
        let basePtdURL = try artifactSwapPtd(art)
        let slotKeys = Set(try art.slotsByParam().slots.values.map { $0.str("key")! })
        for n in ["executorch-merged", "executorch-lora"] {
            let vb = try verify(try Golden.bundle(n), art, key)
            let plan = try SwapPlan.build(vb, base: base)
            let out = tmp.appendingPathComponent("\(n).ptd")
            // the kit's swap: lora bundles merged from the artifact's swap.ptd
            XCTAssertEqual(try ExecuTorchSwap.writeSwapPtd(bundle: vb, artifactSwapPtd: basePtdURL, to: out), 6)
            let ptd = try PtdFile.read(try ByteSource.open(out))
            XCTAssertEqual(Set(ptd.keys), slotKeys)
            for t in plan {
                XCTAssertEqual(Hex.sha256(ptd.buffer(t.key!)!), t.sha256(), "\(n) \(t.param.string)")
                XCTAssertNil(ptd.layout(t.key!)) // XNNPACK blobs carry no layout, as the exporter writes them
            }
            // the swapped tensors are the expected ones
            let want = try Golden.entry(n).obj("swap_plan")!
            if vb.kind == "merged" {
                for t in plan { XCTAssertEqual(t.sha256(), want[t.param]?.objectValue?.str("sha256")) }
            }
        }
        // base values read through a .ptd give the same lora merge as through safetensors
        let lora = try verify(try Golden.bundle("executorch-lora"), art, key)
        let viaPtd = try SwapPlan.build(lora, base: BaseValues.fromPtd(try PtdFile.read(try ByteSource.open(basePtdURL)))).map { $0.sha256() }
        XCTAssertEqual(viaPtd, try SwapPlan.build(lora, base: base).map { $0.sha256() })
        // an ExecuTorch swap refuses a bundle for another backend's artifact
        let coreml = try verify(try Golden.bundle("coreml-merged"), try Golden.artifact("coreml"), key)
        expectCode("backend") { _ = try ExecuTorchSwap.writeSwapPtd(bundle: coreml, artifactSwapPtd: basePtdURL, to: self.tmp.appendingPathComponent("x.ptd")) }
    }

    func testRejectsNonPtd() throws {
        let bundle = try Golden.bundle("executorch-merged")
        for raw in [Data(count: 10), Data(count: 64), bundle] {
            XCTAssertThrowsError(try PtdFile.read(ByteSource.of(raw))) { XCTAssertTrue($0 is PtdError) }
        }
    }
}
