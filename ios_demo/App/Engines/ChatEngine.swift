import Foundation
import LoRAGenKit

/// What the model runs with: the artifact's own weights, or a verified bundle's swapped weights
/// (Core ML: a patched copy of the compiled model; ExecuTorch: a swap `.ptd`).
enum Weights: Sendable {
    case base
    case bundle(id: String, url: URL)
}

struct GenerationStats: Sendable {
    let generatedTokens: Int
    let promptTokens: Int
    /// Decode rate: tokens after the first over the time since the first (prefill excluded).
    let tokensPerSecond: Double
}

/// A greedy next-token model with a KV cache: the part each backend implements.
protocol TokenModel: AnyObject {
    var backend: String { get }
    var maxContext: Int { get }
    /// Loads the weights (a new model object: the program is never re-exported).
    func load(_ weights: Weights) throws
    /// Starts a new sequence (empty KV cache).
    func reset() throws
    /// Feeds `ids` at positions `start...` and returns the argmax token after the last one.
    func nextToken(_ ids: [Int], start: Int) throws -> Int
}

/// Set from any thread to stop a running generation after the current token.
final class StopFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false
    var isSet: Bool { lock.lock(); defer { lock.unlock() }; return value }
    func set(_ v: Bool) { lock.lock(); value = v; lock.unlock() }
}

/// Greedy generation with streamed text, shared by the backends.
final class ChatEngine: @unchecked Sendable {
    let model: TokenModel
    let tokenizer: Tokenizer
    let eosId: Int?
    let stop = StopFlag()

    init(model: TokenModel, tokenizer: Tokenizer, eosId: Int?) {
        self.model = model
        self.tokenizer = tokenizer
        self.eosId = eosId ?? tokenizer.eosId
    }

    var backend: String { model.backend }

    func load(_ weights: Weights) throws { try model.load(weights) }

    /// Blocking: call off the main thread. `onToken` gets each piece of text as it is decoded.
    func generate(prompt: String, maxNewTokens: Int, onToken: (String) -> Void) throws -> GenerationStats {
        stop.set(false)
        try model.reset()
        let ids = tokenizer.encode(prompt) // with the post-processor's BOS
        guard ids.count < model.maxContext else {
            throw BundleError(.build, "the prompt has \(ids.count) tokens; the model's context is \(model.maxContext)")
        }
        var decoder = StreamingDecoder(tokenizer)
        var next = try model.nextToken(ids, start: 0)
        var pos = ids.count
        var n = 0
        var first = Date()
        while n < maxNewTokens && !stop.isSet {
            if next == eosId { break }
            n += 1
            if n == 1 { first = Date() }
            let piece = decoder.append(next)
            if !piece.isEmpty { onToken(piece) }
            if pos >= model.maxContext { break }
            next = try model.nextToken([next], start: pos)
            pos += 1
        }
        let tail = decoder.finish()
        if !tail.isEmpty { onToken(tail) }
        let seconds = Date().timeIntervalSince(first)
        return GenerationStats(generatedTokens: n, promptTokens: ids.count,
                               tokensPerSecond: n > 1 && seconds > 0 ? Double(n - 1) / seconds : 0)
    }
}

/// Argmax over the last row of a `[1, seq, vocab]` logits buffer given as raw bytes and strides
/// (in elements). `fp16`: IEEE half elements (Core ML fp16 models), else Float32.
func argmaxLastRow(_ raw: UnsafeRawBufferPointer, shape: [Int], strides: [Int], fp16: Bool) -> Int {
    let seq = shape[shape.count - 2]
    let vocab = shape[shape.count - 1]
    let rowStart = (seq - 1) * strides[strides.count - 2]
    let step = strides[strides.count - 1]
    var best = 0
    var bestValue = -Float.infinity
    for j in 0..<vocab {
        let e = rowStart + j * step
        let v = fp16 ? Fp16.toFloat(raw.loadUnaligned(fromByteOffset: e * 2, as: UInt16.self))
            : raw.loadUnaligned(fromByteOffset: e * 4, as: Float.self)
        if v > bestValue {
            bestValue = v
            best = j
        }
    }
    return best
}
