#if canImport(ExecuTorch)
import ExecuTorch
import Foundation
import LoRAGenKit

/// ExecuTorch (XNNPACK): `model.pte` + `foundation.ptd` + a swap `.ptd`. The base model uses the
/// artifact's own `swap.ptd`; a bundle uses the `.ptd` LoRAGenKit wrote (`ExecuTorchSwap`: same
/// data keys, the bundle's bytes). A swap is a new `Module(filePath:dataFilePaths:)` over other data
/// files; the program is never re-exported. `forward(input_ids int64 [1, n], cache_position int64
/// [n]) -> logits float32 [1, n, vocab]`; the KV cache lives in the method's memory-planned
/// buffers, so unloading and reloading `forward` starts a new sequence.
///
/// Built only when the app target links the ExecuTorch Swift package (executorch >= 1.0, products
/// `executorch` and `backend_xnnpack`, plus the kernels the program needs); without it the app
/// offers Core ML artifacts only.
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
        let swap: URL
        switch weights {
        case .base: swap = dir.appendingPathComponent("swap.ptd")
        case .bundle(_, let url): swap = url
        }
        let m = Module(filePath: dir.appendingPathComponent("model.pte").path,
                       dataFilePaths: [dir.appendingPathComponent("foundation.ptd").path, swap.path])
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
