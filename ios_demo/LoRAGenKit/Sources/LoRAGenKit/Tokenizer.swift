import Foundation

/// A byte-level BPE tokenizer read from a Hugging Face `tokenizer.json` at run time (the artifact
/// carries the model's own file; no ids are built in). It covers the tokenizer loragen's presets
/// write (`models.build_tokenizer`: one token per UTF-8 byte through GPT-2's byte-to-unicode table,
/// no merges, `ByteLevel` pre-tokenizer without regex, `<s>` prepended by the post-processor) and
/// GPT-2-style byte-level BPE with ranked merges. SentencePiece/Unigram/WordPiece are not supported.
public final class ByteLevelTokenizer: @unchecked Sendable {
    private var vocab: [String: Int] = [:]
    private var idToToken: [Int: String] = [:]
    private var ranks: [String: Int] = [:] // "a b" -> rank
    private var added: [(content: String, id: Int)] = [] // longest first
    private var addedIds = Set<Int>()
    private let useRegex: Bool
    private let addPrefixSpace: Bool
    /// Ids the post-processor puts before a single sequence (e.g. `<s>`).
    public let prefixIds: [Int]
    public let bosId: Int?
    public let eosId: Int?
    public var vocabSize: Int { Swift.max(vocab.values.max() ?? -1, idToToken.keys.max() ?? -1) + 1 }

    public enum TokenizerError: Error, CustomStringConvertible {
        case unsupported(String)
        public var description: String { if case .unsupported(let m) = self { return m }; return "tokenizer error" }
    }

    public convenience init(url: URL) throws {
        let data = try Data(contentsOf: url)
        guard let text = String(data: data, encoding: .utf8), case .object(let o) = try JSON.parse(text) else {
            throw TokenizerError.unsupported("\(url.lastPathComponent) is not a JSON object")
        }
        try self.init(json: o)
    }

    public init(json: JSONObject) throws {
        guard let model = json.obj("model"), model.str("type") == "BPE", let v = model.obj("vocab") else {
            throw TokenizerError.unsupported("only BPE tokenizer.json files are supported")
        }
        for (k, idv) in v.entries {
            guard let id = idv.intValue else { continue }
            vocab[k.string] = id
            idToToken[id] = k.string
        }
        if case .array(let merges)? = model["merges"] {
            for (i, m) in merges.enumerated() {
                switch m {
                case .string(let s): ranks[s.string] = i
                case .array(let pair) where pair.count == 2:
                    if let a = pair[0].stringValue, let b = pair[1].stringValue { ranks[a + " " + b] = i }
                default: continue
                }
            }
        }
        if case .array(let tokens)? = json["added_tokens"] {
            for t in tokens {
                guard let o = t.objectValue, let id = o["id"]?.intValue, let content = o.str("content"), !content.isEmpty else { continue }
                added.append((content, id))
                addedIds.insert(id)
                idToToken[id] = content
            }
        }
        added.sort { $0.content.utf16.count > $1.content.utf16.count }
        let pre = json.obj("pre_tokenizer")
        if pre?.str("type") == "ByteLevel" {
            useRegex = pre?["use_regex"]?.boolValue ?? true
            addPrefixSpace = pre?["add_prefix_space"]?.boolValue ?? false
        } else {
            useRegex = true
            addPrefixSpace = false
        }
        // TemplateProcessing: the special tokens before $A in "single"
        var prefix: [Int] = []
        if let post = json.obj("post_processor"), post.str("type") == "TemplateProcessing", case .array(let single)? = post["single"] {
            for item in single {
                guard let st = item.objectValue?.obj("SpecialToken"), let tid = st.str("id") else { break }
                if let ids = post.obj("special_tokens")?.obj(tid)?["ids"]?.arrayValue {
                    prefix.append(contentsOf: ids.compactMap { $0.intValue })
                } else if let id = ByteLevelTokenizer.lookup(tid, added, vocab) {
                    prefix.append(id)
                }
            }
        }
        prefixIds = prefix
        let addedSnapshot = added
        let vocabSnapshot = vocab
        func find(_ names: [String]) -> Int? { names.lazy.compactMap { ByteLevelTokenizer.lookup($0, addedSnapshot, vocabSnapshot) }.first }
        bosId = find(["<s>", "<|begin_of_text|>", "<bos>"])
        eosId = find(["</s>", "<|end_of_text|>", "<|im_end|>", "<eos>"])
    }

    private static func lookup(_ content: String, _ added: [(content: String, id: Int)], _ vocab: [String: Int]) -> Int? {
        added.first(where: { $0.content == content })?.id ?? vocab[content]
    }

    /// Token ids of `text`; with `addSpecial`, the post-processor's prefix (e.g. `<s>`) first, as
    /// the Python tokenizer's `__call__` does.
    public func encode(_ text: String, addSpecial: Bool = false) -> [Int] {
        var out = addSpecial ? prefixIds : []
        var plain = ""
        func flush() {
            if plain.isEmpty { return }
            for piece in pretokenize(plain) { out.append(contentsOf: bpe(ByteLevelTokenizer.byteChars(piece))) }
            plain = ""
        }
        var rest = Substring(text)
        outer: while !rest.isEmpty {
            for (content, id) in added where rest.hasPrefix(content) {
                flush()
                out.append(id)
                rest = rest.dropFirst(content.count)
                continue outer
            }
            plain.append(rest.removeFirst())
        }
        flush()
        return out
    }

    private static let gpt2Pattern = try! NSRegularExpression(
        pattern: "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+")

    private func pretokenize(_ s: String) -> [String] {
        let text = addPrefixSpace && !s.hasPrefix(" ") ? " " + s : s
        if !useRegex { return [text] }
        let ns = text as NSString
        return ByteLevelTokenizer.gpt2Pattern.matches(in: text, range: NSRange(location: 0, length: ns.length))
            .map { ns.substring(with: $0.range) }
    }

    private func bpe(_ word: [String]) -> [Int] {
        var parts = word
        if !ranks.isEmpty {
            while parts.count > 1 {
                var best = -1
                var bestRank = Int.max
                for k in 0..<(parts.count - 1) {
                    if let r = ranks[parts[k] + " " + parts[k + 1]], r < bestRank {
                        bestRank = r
                        best = k
                    }
                }
                if best < 0 { break }
                parts[best] += parts[best + 1]
                parts.remove(at: best + 1)
            }
        }
        let unk = vocab["<unk>"] ?? 0
        return parts.map { vocab[$0] ?? unk }
    }

    /// The bytes of a token (specials: their UTF-8 text; byte-level symbols: the bytes they stand for).
    public func bytes(of id: Int) -> [UInt8] {
        guard let tok = idToToken[id] else { return [] }
        if addedIds.contains(id) { return Array(tok.utf8) }
        return tok.unicodeScalars.map { ByteLevelTokenizer.charToByte[$0.value] ?? 0x3F }
    }

    public func isSpecial(_ id: Int) -> Bool { addedIds.contains(id) }

    public func decode(_ ids: [Int], skipSpecial: Bool = true) -> String {
        var b: [UInt8] = []
        for id in ids where !(skipSpecial && isSpecial(id)) { b.append(contentsOf: bytes(of: id)) }
        return String(decoding: b, as: UTF8.self)
    }

    /// GPT-2's reversible byte -> printable character table.
    public static let byteToChar: [UInt32] = {
        var t = [UInt32](repeating: 0, count: 256)
        var n: UInt32 = 0
        for b in 0..<256 {
            let printable = (0x21...0x7E).contains(b) || (0xA1...0xAC).contains(b) || (0xAE...0xFF).contains(b)
            if printable {
                t[b] = UInt32(b)
            } else {
                t[b] = 256 + n
                n += 1
            }
        }
        return t
    }()

    static let charToByte: [UInt32: UInt8] = {
        var m: [UInt32: UInt8] = [:]
        for (b, c) in byteToChar.enumerated() { m[c] = UInt8(b) }
        return m
    }()

    /// One byte-level symbol per UTF-8 byte of `s`.
    static func byteChars(_ s: String) -> [String] {
        s.utf8.map { String(Character(Unicode.Scalar(byteToChar[Int($0)])!)) }
    }
}

/// Turns a stream of token ids into text as soon as it is valid UTF-8 (a character split across
/// byte tokens appears when its last byte arrives).
public struct StreamingDecoder {
    private var pending: [UInt8] = []
    private let tokenizer: ByteLevelTokenizer

    public init(_ tokenizer: ByteLevelTokenizer) { self.tokenizer = tokenizer }

    /// The text completed by this token ("" while a character is incomplete; specials are skipped).
    public mutating func append(_ id: Int) -> String {
        if tokenizer.isSpecial(id) { return "" }
        pending.append(contentsOf: tokenizer.bytes(of: id))
        // emit the longest prefix that does not end inside a UTF-8 sequence
        var cut = pending.count
        var i = pending.count - 1
        var back = 0
        while i >= 0 && back < 4 && (pending[i] & 0xC0) == 0x80 { i -= 1; back += 1 }
        if i >= 0 {
            let lead = pending[i]
            let need = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 1
            if pending.count - i < need { cut = i }
        }
        let text = String(decoding: pending[0..<cut], as: UTF8.self)
        pending.removeFirst(cut)
        return text
    }

    /// Whatever is left (an incomplete character decodes to U+FFFD).
    public mutating func finish() -> String {
        defer { pending = [] }
        return String(decoding: pending, as: UTF8.self)
    }
}
