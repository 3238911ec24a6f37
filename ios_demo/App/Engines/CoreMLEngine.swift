import CoreML
import Foundation
import LoRAGenKit

/// Core ML: the artifact's `model.mlpackage` (ML program, iOS 18, stateful KV cache) compiled
/// once on the device; a bundle is swapped in by loading a patched copy of the compiled model
/// (`CoreMLSwap.writePatchedCopy`). The package follows the stateful contract of swift-transformers'
/// `LanguageModel` (see docs/exporters.md, "Core ML contract"): inputs `inputIds` int32 [1, n] and
/// `causalMask` float16 [1, 1, n, start + n] (additive: 0 = attend, -inf = masked; the n new tokens
/// take positions start ..< start + n); output `logits` [1, 1, vocab] (the last position; [1, n,
/// vocab] for an all-logits export); states `keyCache`/`valueCache` in one `MLState`
/// (`makeState()`), so the exported model needs iOS 18 / macOS 15 to run at all.
@available(iOS 18.0, macOS 15.0, *)
final class CoreMLEngine: TokenModel {
    let backend = "coreml"
    let maxContext: Int
    /// The pristine compiled model (never modified).
    let pristine: URL
    private var model: MLModel?
    private var state: MLState?

    init(pristine: URL, maxContext: Int) {
        self.pristine = pristine
        self.maxContext = maxContext
    }

    func load(_ weights: Weights) throws {
        model = nil
        state = nil
        switch weights {
        case .base: model = try CoreMLSwap.load(pristine)
        case .bundle(_, let url): model = try CoreMLSwap.load(url)
        }
    }

    func reset() throws {
        guard let m = model else { throw BundleError(.build, "no model loaded") }
        state = m.makeState()
    }

    func nextToken(_ ids: [Int], start: Int) throws -> Int {
        guard let m = model, let s = state else { throw BundleError(.build, "no model loaded") }
        let n = ids.count
        let end = start + n
        let input = try MLMultiArray(shape: [1, NSNumber(value: n)], dataType: .int32)
        let mask = try MLMultiArray(shape: [1, 1, NSNumber(value: n), NSNumber(value: end)], dataType: .float16)
        input.withUnsafeMutableBufferPointer(ofType: Int32.self) { p, strides in
            for i in 0..<n { p[i * strides[1]] = Int32(ids[i]) }
        }
        // IEEE half bit patterns: +0 (attend) for keys up to the query's own position, -inf after it.
        mask.withUnsafeMutableBufferPointer(ofType: UInt16.self) { p, strides in
            for i in 0..<n {
                for j in 0..<end { p[i * strides[2] + j * strides[3]] = j <= start + i ? 0x0000 : 0xFC00 }
            }
        }
        let features = try MLDictionaryFeatureProvider(dictionary: [
            "inputIds": MLFeatureValue(multiArray: input),
            "causalMask": MLFeatureValue(multiArray: mask),
        ])
        let out = try m.prediction(from: features, using: s, options: MLPredictionOptions())
        guard let logits = out.featureValue(for: "logits")?.multiArrayValue else {
            throw BundleError(.build, "the model has no 'logits' output")
        }
        let shape = logits.shape.map { $0.intValue }
        let strides = logits.strides.map { $0.intValue }
        let fp16 = logits.dataType == .float16
        if !fp16 && logits.dataType != .float32 { throw BundleError(.build, "unexpected logits type \(logits.dataType.rawValue)") }
        return logits.withUnsafeBytes { argmaxLastRow($0, shape: shape, strides: strides, fp16: fp16) }
    }
}
