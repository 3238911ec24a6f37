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

    /// A foundation (never swapped) tensor of the test artifact's model.ptd, with a layout.
    private let foundation = PtdEntry(key: "foundation-weight", data: Data((0..<300).map { UInt8(truncatingIfNeeded: $0 * 7) }),
                                      layout: TensorLayout(scalarType: 6, sizes: [75], dimOrder: [0]))

    /// An artifact's model.ptd: the foundation entry, then every swap slot under its key, holding the
    /// golden base values.
    private func artifactModelPtd(_ art: Artifact) throws -> Data {
        let st = try Golden.safetensors("base/executorch.safetensors")
        let s = try art.slotsByParam()
        return try PtdWriter.toData([foundation] + s.order.map { p in PtdEntry(key: s.slots[p]!.str("key")!, data: st.tensorData(p)!) })
    }

    func testExecuTorchSwapFromBundles() throws {
        let art = try Golden.artifact("executorch")
        let key = try Golden.publicKey()
        let base = BaseValues.fromSafetensors(try Golden.safetensors("base/executorch.safetensors"))
        let modelPtd = tmp.appendingPathComponent("model.ptd")
        try artifactModelPtd(art).write(to: modelPtd)
        let original = try PtdFile.read(try ByteSource.open(modelPtd))
        let slotKeys = Set(try art.slotsByParam().slots.values.map { $0.str("key")! })
        for n in ["executorch-merged", "executorch-lora"] {
            let vb = try verify(try Golden.bundle(n), art, key)
            let plan = try SwapPlan.build(vb, base: base)
            // the swapped tensors alone as a .ptd: each under its slot's key, no layout (as exported)
            let alone = try PtdFile.read(ByteSource.of(try PtdWriter.toData(try PtdWriter.entries(for: plan))))
            XCTAssertEqual(Set(alone.keys), slotKeys)
            for t in plan {
                XCTAssertEqual(Hex.sha256(alone.buffer(t.key!)!), t.sha256(), "\(n) \(t.param.string)")
                XCTAssertNil(alone.layout(t.key!))
            }
            // the kit's swap: a copy of model.ptd with the slots' bytes replaced; lora bundles merged from model.ptd
            let out = tmp.appendingPathComponent("\(n).ptd")
            XCTAssertEqual(try ExecuTorchSwap.writeSwapped(bundle: vb, artifactPtd: modelPtd, to: out), 6)
            let ptd = try PtdFile.read(try ByteSource.open(out))
            XCTAssertEqual(ptd.keys, original.keys)
            XCTAssertEqual(ptd.buffer(foundation.key)?.byteArray, foundation.data.byteArray)
            XCTAssertEqual(ptd.layout(foundation.key), foundation.layout)
            for t in plan {
                XCTAssertEqual(Hex.sha256(ptd.buffer(t.key!)!), t.sha256(), "\(n) \(t.param.string)")
                XCTAssertNil(ptd.layout(t.key!)) // XNNPACK blobs carry no layout, as the exporter writes them
            }
            XCTAssertFalse(FileManager.default.fileExists(atPath: tmp.appendingPathComponent(".\(n).ptd.tmp").path))
            // the swapped tensors are the expected ones
            let want = try Golden.entry(n).obj("swap_plan")!
            if vb.kind == "merged" {
                for t in plan { XCTAssertEqual(t.sha256(), want[t.param]?.objectValue?.str("sha256")) }
            }
        }
        // base values read through a .ptd give the same lora merge as through safetensors
        let lora = try verify(try Golden.bundle("executorch-lora"), art, key)
        let viaPtd = try SwapPlan.build(lora, base: BaseValues.fromPtd(original)).map { $0.sha256() }
        XCTAssertEqual(viaPtd, try SwapPlan.build(lora, base: base).map { $0.sha256() })
        // an ExecuTorch swap refuses a bundle for another backend's artifact, and a data file that is not a .ptd
        let coreml = try verify(try Golden.bundle("coreml-merged"), try Golden.artifact("coreml"), key)
        let elsewhere = tmp.appendingPathComponent("x.ptd")
        expectCode("backend") { _ = try ExecuTorchSwap.writeSwapped(bundle: coreml, artifactPtd: modelPtd, to: elsewhere) }
        let notPtd = tmp.appendingPathComponent("not.ptd")
        try Data(count: 64).write(to: notPtd)
        expectCode("build") { _ = try ExecuTorchSwap.writeSwapped(bundle: lora, artifactPtd: notPtd, to: elsewhere) }
        XCTAssertFalse(FileManager.default.fileExists(atPath: elsewhere.path))
    }

    func testSwappedCopyOfTheArtifactPtd() throws {
        let art = try Golden.artifact("executorch")
        let key = try Golden.publicKey()
        let baseRaw = try artifactModelPtd(art)
        let base = try PtdFile.read(ByteSource.of(baseRaw))
        for n in ["executorch-merged", "executorch-lora"] {
            let vb = try verify(try Golden.bundle(n), art, key)
            let plan = try SwapPlan.build(vb, base: BaseValues.fromPtd(base))
            let out = tmp.appendingPathComponent("\(n).ptd")
            try ExecuTorchSwap.writeSwapped(base: ByteSource.of(baseRaw), plan: plan, to: out)
            let raw = try Data(contentsOf: out)
            XCTAssertEqual(raw.count, baseRaw.count)
            let back = try PtdFile.read(ByteSource.of(raw))
            XCTAssertEqual(back.keys, base.keys)
            XCTAssertEqual(back.segmentBaseOffset, base.segmentBaseOffset)
            XCTAssertEqual(back.segments.map { [$0.offset, $0.size] }, base.segments.map { [$0.offset, $0.size] })
            XCTAssertEqual(back.buffer(foundation.key)?.byteArray, foundation.data.byteArray)
            XCTAssertEqual(back.layout(foundation.key), foundation.layout)
            for t in plan { XCTAssertEqual(Hex.sha256(back.buffer(t.key!)!), t.sha256(), "\(n) \(t.param.string)") }
            // every changed byte lies in a swapped segment
            let swapped = plan.map { t -> Range<Int> in
                let s = base.segments[base.segmentIndex(t.key!)!]
                return (base.segmentBaseOffset + s.offset)..<(base.segmentBaseOffset + s.offset + s.size)
            }
            let a = raw.byteArray
            let b = baseRaw.byteArray
            let changed = a.indices.filter { a[$0] != b[$0] }
            XCTAssertFalse(changed.isEmpty)
            XCTAssertTrue(changed.allSatisfy { i in swapped.contains { $0.contains(i) } })
        }
        // a tensor without a key, whose key is not in the file, whose size is not its segment's, or
        // whose recorded offset is not the segment's: refused with code slot, nothing written
        let t = try SwapPlan.build(try verify(try Golden.bundle("executorch-merged"), art, key), base: nil)[0]
        let tkey = t.key!
        let seg = base.segments[base.segmentIndex(tkey)!]
        let at = base.segmentBaseOffset + seg.offset
        func retarget(_ kv: [(String, JSONValue)]) -> SwapTensor {
            SwapTensor(param: t.param, locator: JSONObject(kv), dtype: t.dtype, shape: t.shape, data: t.data)
        }
        let src = ByteSource.of(baseRaw)
        let fkey = foundation.key
        let sink = tmp.appendingPathComponent("sink.ptd")
        expectCode("slot") { try ExecuTorchSwap.writeSwapped(base: src, plan: [retarget([])], to: sink) }
        expectCode("slot") { try ExecuTorchSwap.writeSwapped(base: src, plan: [retarget([("key", .str(fkey))])], to: sink) }
        expectCode("slot") { try ExecuTorchSwap.writeSwapped(base: src, plan: [retarget([("key", .str("missing"))])], to: sink) }
        expectCode("slot") {
            try ExecuTorchSwap.writeSwapped(base: src, plan: [retarget([("key", .str(tkey)), ("offset", .int(Int64(at + 128)))])], to: sink)
        }
        expectCode("slot") { try ExecuTorchSwap.writeSwapped(base: src, plan: [retarget([("key", .str(tkey))]), t], to: sink) }
        XCTAssertFalse(FileManager.default.fileExists(atPath: sink.path))
        try ExecuTorchSwap.writeSwapped(base: src, plan: [retarget([("key", .str(tkey)), ("offset", .int(Int64(at)))])], to: sink)
        XCTAssertEqual(try Data(contentsOf: sink).count, baseRaw.count)
    }

    func testRejectsNonPtd() throws {
        let bundle = try Golden.bundle("executorch-merged")
        for raw in [Data(count: 10), Data(count: 64), bundle] {
            XCTAssertThrowsError(try PtdFile.read(ByteSource.of(raw))) { XCTAssertTrue($0 is PtdError) }
        }
    }
}
