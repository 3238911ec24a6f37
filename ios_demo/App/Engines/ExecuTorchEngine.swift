#if canImport(ExecuTorch)
import ExecuTorch
import Foundation
import LoRAGenKit

/// ExecuTorch (XNNPACK): `model.pte` + one data file, `model.ptd` (the layout ExecuTorch's stock
/// runners load). The base model uses the artifact's `model.ptd`; a bundle uses the copy LoRAGenKit
/// wrote (`ExecuTorchSwap`: `model.ptd` with the swap slots' bytes replaced, same keys). A swap is a
/// new `Module(filePath:dataFilePaths:)` over the other data file; the program is never re-exported.
/// `forward(input_ids int64 [1, n], cache_position int64 [n]) -> logits float32 [1, n, vocab]`; the
/// KV cache lives in the method's memory-planned buffers, so unloading and reloading `forward`
/// starts a new sequence.
///
/// ExecuTorch Swift package: project.yml pins `swiftpm-<exporter version>` (products `executorch`,
/// `backend_xnnpack`, `kernels_optimized`); README.md cites the source of each call. Without the
/// package the app offers Core ML artifacts only.
final class ExecuTorchEngine: TokenModel {
    let backend = "executorch"
    let maxContext: Int
    let dir: URL
    private var module: Module?

    init(dir: URL, maxContext: Int) {
        self.dir = dir
        self.maxContext = maxContext
    }

    func load(_ weights: Weights) throws {
        module = nil
        let data: URL
        switch weights {
        case .base: data = dir.appendingPathComponent("model.ptd")
        case .bundle(_, let url): data = url
        }
        let m = Module(filePath: dir.appendingPathComponent("model.pte").path, dataFilePaths: [data.path])
        try m.load("forward")
        module = m
    }

    func reset() throws {
        guard let m = module else { throw BundleError(.build, "no model loaded") }
        m.unload("forward")
        try m.load("forward")
    }

    func nextToken(_ ids: [Int], start: Int) throws -> Int {
        guard let m = module else { throw BundleError(.build, "no model loaded") }
        let n = ids.count
        let input = Tensor<Int64>(ids.map { Int64($0) }, shape: [1, n])
        let positions = Tensor<Int64>((start..<(start + n)).map { Int64($0) }, shape: [n])
        let outputs: [Value] = try m.forward([input, positions])
        guard let logits: Tensor<Float> = outputs.first?.tensor() else {
            throw BundleError(.build, "forward returned no float32 logits")
        }
        let shape = logits.shape
        let strides = logits.strides
        return logits.withUnsafeBytes { (p: UnsafeBufferPointer<Float>) in
            argmaxLastRow(UnsafeRawBufferPointer(p), shape: shape, strides: strides, fp16: false)
        }
    }
}
#endif
