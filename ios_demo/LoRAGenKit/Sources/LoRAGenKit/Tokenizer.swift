import Foundation

/// A tokenizer.json the phone tokenizer cannot reproduce exactly, or text it cannot encode.
public struct TokenizerError: Error, CustomStringConvertible, Equatable {
    public let message: String
    public var description: String { message }
}

/// UTF-16 code units: text is handled as units (as the Kotlin core's `String`), never compared as a
/// Swift `String`, whose equality is canonical equivalence ("é" == "e\u{301}"), which a vocab must not do.
public typealias U16 = [UInt16]

/// The Hugging Face `tokenizer.json` pipeline for BPE models, the Swift twin of the Kotlin core's
/// `Tokenizer.kt` (same structure, same supported components, same refusals):
///
///  - added/special tokens split first (leftmost-longest; `normalized` tokens after the normalizer);
///  - normalizers `Sequence`, `Prepend`, `Replace` (string pattern);
///  - pre-tokenizers `Sequence`, `ByteLevel` (GPT-2 regex, byte-to-unicode), `Split` (regex or string,
///    every split behavior, invert), `Metaspace` (prepend_scheme always/first/never, split);
///  - model `BPE`: ranked merges (the library's priority-queue order), `ignore_merges`,
///    `byte_fallback` (`<0xNN>`), `unk_token`, `fuse_unk`;
///  - post-processors `TemplateProcessing` (single sequence), `ByteLevel`, `Sequence`;
///  - decoders `ByteLevel`, `ByteFallback`, `Fuse`, `Strip`, `Replace` (string), `Metaspace`, `Sequence`.
///
/// Anything else is refused at load with a `TokenizerError` naming it. Regex patterns run on
/// NSRegularExpression (ICU) with `\s`/`\S` rewritten to the White_Space property (ICU's `\s` is
/// `[\t\n\f\r\p{Z}]`, which lacks U+000B and U+0085). Text with a lone surrogate is refused by
/// `encode(units:)`, as the Python library refuses it (a Swift `String` cannot hold one).
public final class Tokenizer: @unchecked Sendable {
    private struct Added { let content: U16; let id: Int; let special: Bool; let normalized: Bool }
    fileprivate struct Piece { let text: U16; let atStart: Bool; var id: Int = -1 }
    private typealias Step<T> = (T) -> T

    private var vocab: [U16: Int] = [:]
    private var idToTokenTable: [U16?] = []
    private var merges: [Int64: (rank: Int, id: Int)] = [:] // (left id, right id) -> rank, new id
    private var ignoreMerges = false
    private var byteFallback = false
    private var fuseUnk = false
    private var unkId: Int?
    private var added: [Added] = []
    private var addedById: [Int: Added] = [:]
    private var specialContents = Set<U16>()
    private var rawMatcher = Matcher([])
    private var normalizedMatcher = Matcher([])
    private var normalizer: Step<U16> = { $0 }
    private var preTokenizer: Step<[Piece]> = { $0 }
    private var processors: [Step<[Int]>] = []
    private var decoder: Step<[U16]>?

    /// The first id the post-processor puts before the text (e.g. `<s>`), if any.
    public private(set) var bosId: Int?
    /// The end-of-sequence token among the added tokens (`</s>`, `<eos>`, `<|end_of_text|>`, ...), if any.
    public private(set) var eosId: Int?
    public var vocabSize: Int { idToTokenTable.count }

    public convenience init(url: URL) throws {
        try self.init(jsonText: String(decoding: try Data(contentsOf: url), as: UTF8.self))
    }

    public convenience init(jsonText: String) throws {
        let v: JSONValue
        do { v = try JSON.parse(jsonText) } catch { throw TokenizerError(message: "tokenizer.json is not valid JSON: \(error)") }
        guard case .object(let o) = v else { throw TokenizerError(message: "tokenizer.json is not a JSON object") }
        try self.init(json: o)
    }

    public init(json: JSONObject) throws {
        for k in ["truncation", "padding"] { if let v = json[k], !Self.isNull(v) { throw Self.unsupported("\(k) (must be null)") } }
        guard let model = json.obj("model") else { throw Self.unsupported("a tokenizer.json without a model") }
        if model.str("type") != "BPE" { throw Self.unsupported("model type \(model.str("type") ?? "?")") }
        if let d = model["dropout"], !Self.isNull(d), d.number != 0 { throw Self.unsupported("BPE dropout \(d.number ?? .nan)") }
        for k in ["continuing_subword_prefix", "end_of_word_suffix"] { if let v = model[k], !Self.isNull(v) { throw Self.unsupported("BPE \(k)") } }
        ignoreMerges = try Self.bool(model, "ignore_merges", false)
        byteFallback = try Self.bool(model, "byte_fallback", false)
        fuseUnk = try Self.bool(model, "fuse_unk", false)
        guard let v = model.obj("vocab") else { throw Self.unsupported("a BPE model without a vocab") }
        var maxId = -1
        for (k, idv) in v.entries {
            let id = try Self.int(idv, "vocab id of \(k.string)")
            vocab[k.units] = id
            maxId = Swift.max(maxId, id)
        }
        for t in json["added_tokens"]?.arrayValue ?? [] {
            guard let o = t.objectValue else { throw Self.unsupported("an added token that is not an object") }
            guard let content = o["content"]?.jsonString?.units else { throw Self.unsupported("an added token without content") }
            for k in ["single_word", "lstrip", "rstrip"] {
                if try Self.bool(o, k, false) { throw Self.unsupported("added token \(k) (\(Self.text(content)))") }
            }
            if content.isEmpty { throw Self.unsupported("an empty added token") }
            let a = Added(content: content, id: try Self.int(o["id"], "added token id"), special: try Self.bool(o, "special", false),
                          normalized: try Self.bool(o, "normalized", false))
            added.append(a)
            addedById[a.id] = a
            if a.special { specialContents.insert(content) }
            maxId = Swift.max(maxId, a.id)
        }
        idToTokenTable = [U16?](repeating: nil, count: maxId + 1)
        for (k, id) in vocab { idToTokenTable[id] = k }
        if let unk = model["unk_token"], !Self.isNull(unk) {
            guard let u = unk.jsonString?.units else { throw Self.unsupported("unk_token \(unk)") }
            guard let id = vocab[u] else { throw Self.unsupported("unk_token \(Self.text(u)) not in the vocab") }
            unkId = id
        }
        for (rank, m) in (model["merges"]?.arrayValue ?? []).enumerated() {
            let pair: [U16]
            switch m {
            case .string(let s): pair = Self.splitOnSpace(s.units)
            case .array(let a): pair = try a.map { guard let u = $0.jsonString?.units else { throw Self.unsupported("merge \(m)") }; return u }
            default: throw Self.unsupported("merge \(m)")
            }
            if pair.count != 2 { throw Self.unsupported("merge \(m)") }
            guard let a = vocab[pair[0]] else { throw Self.unsupported("merge \(m): \(Self.text(pair[0])) not in the vocab") }
            guard let b = vocab[pair[1]] else { throw Self.unsupported("merge \(m): \(Self.text(pair[1])) not in the vocab") }
            guard let n = vocab[pair[0] + pair[1]] else { throw Self.unsupported("merge \(m): \(Self.text(pair[0] + pair[1])) not in the vocab") }
            merges[Self.key(a, b)] = (rank, n)
        }
        if let n = json["normalizer"], !Self.isNull(n) { normalizer = try buildNormalizer(n) }
        if let p = json["pre_tokenizer"], !Self.isNull(p) { preTokenizer = try buildPreTokenizer(p) }
        if let p = json["post_processor"], !Self.isNull(p) { processors = try buildPostProcessor(p) }
        if let d = json["decoder"], !Self.isNull(d) { decoder = try buildDecoder(d) }
        rawMatcher = Matcher(added.filter { !$0.normalized }.map { ($0.content, $0.id) })
        let norm = normalizer
        normalizedMatcher = Matcher(added.filter { $0.normalized }.map { (norm($0.content), $0.id) })
        bosId = postProcess([]).first
        let names = ["</s>", "<eos>", "<|end_of_text|>", "<|eot_id|>", "<|endoftext|>", "<|im_end|>", "<end_of_turn>"]
        eosId = names.lazy.compactMap { n in self.added.first(where: { $0.content == Array(n.utf16) })?.id }.first
    }

    private func postProcess(_ ids: [Int]) -> [Int] { processors.reduce(ids) { acc, f in f(acc) } }

    /// Token ids of `text`, as `Tokenizer.encode(text, add_special_tokens=...).ids` in Python.
    public func encode(_ text: String, addSpecialTokens: Bool = true) -> [Int] {
        // a Swift String is valid Unicode, so this cannot throw
        (try? encode(units: Array(text.utf16), addSpecialTokens: addSpecialTokens)) ?? []
    }

    /// Token ids of UTF-16 text; a lone surrogate is refused (the Python library refuses it too).
    public func encode(units text: U16, addSpecialTokens: Bool = true) throws -> [Int] {
        try Self.checkUnicode(text)
        // 1. added tokens matched on the raw text, 2. normalizer, then `normalized` added tokens
        var pieces: [Piece] = []
        for p in rawMatcher.split(Piece(text: text, atStart: true)) {
            if p.id >= 0 { pieces.append(p); continue }
            pieces.append(contentsOf: normalizedMatcher.split(Piece(text: normalizer(p.text), atStart: p.atStart)))
        }
        var out: [Int] = []
        for p in pieces {
            if p.id >= 0 { out.append(p.id); continue }
            for w in preTokenizer([p]) { bpe(w.text, &out) }
        }
        return addSpecialTokens ? postProcess(out) : out
    }

    /// Text of `ids`, as `Tokenizer.decode(ids, skip_special_tokens=...)` in Python (unknown ids are dropped).
    public func decode(_ ids: [Int], skipSpecialTokens: Bool = true) -> String {
        Self.text(decodeUnits(ids, skipSpecialTokens: skipSpecialTokens))
    }

    public func decodeUnits(_ ids: [Int], skipSpecialTokens: Bool = true) -> U16 {
        var tokens: [U16] = []
        for id in ids {
            guard let t = idToTokenUnits(id) else { continue }
            if skipSpecialTokens && specialContents.contains(t) { continue }
            tokens.append(t)
        }
        guard let d = decoder else { return Array(tokens.joined(separator: [0x20])) }
        return Array(d(tokens).joined())
    }

    public func isSpecial(_ id: Int) -> Bool { addedById[id]?.special == true }

    /// The token string of `id`; a `normalized` added token reads as its normalized content, as in the library.
    public func idToTokenUnits(_ id: Int) -> U16? {
        if let a = addedById[id] { return a.normalized ? normalizer(a.content) : a.content }
        return id >= 0 && id < idToTokenTable.count ? idToTokenTable[id] : nil
    }

    public func idToToken(_ id: Int) -> String? { idToTokenUnits(id).map { Self.text($0) } }

    public func tokenToId(_ token: String) -> Int? {
        let u = Array(token.utf16)
        return added.first(where: { $0.content == u })?.id ?? vocab[u]
    }

    // ---- added tokens ----

    /// Leftmost-longest matching of the added tokens (the library's Aho-Corasick `LeftmostLongest`).
    private struct Matcher {
        private var byFirst: [UInt16: [(U16, Int)]] = [:]

        init(_ tokens: [(U16, Int)]) {
            for t in tokens where !t.0.isEmpty { byFirst[t.0[0], default: []].append(t) }
            for (k, l) in byFirst { byFirst[k] = l.sorted { $0.0.count > $1.0.count } }
        }

        func split(_ p: Piece) -> [Piece] {
            let s = p.text
            if byFirst.isEmpty { return s.isEmpty ? [] : [p] }
            var out: [Piece] = []
            var start = 0
            var i = 0
            while i < s.count {
                guard let hit = byFirst[s[i]]?.first(where: { Tokenizer.startsWith(s, $0.0, at: i) }) else { i += 1; continue }
                if i > start { out.append(Piece(text: Array(s[start..<i]), atStart: p.atStart && start == 0)) }
                out.append(Piece(text: hit.0, atStart: false, id: hit.1))
                i += hit.0.count
                start = i
            }
            if start < s.count { out.append(Piece(text: Array(s[start...]), atStart: p.atStart && start == 0)) }
            return out
        }
    }

    // ---- model ----

    /// The library's `BPE::tokenize` for one pre-tokenized word, ids appended to `out`.
    private func bpe(_ word: U16, _ out: inout [Int]) {
        if word.isEmpty { return }
        if ignoreMerges, let id = vocab[word] { out.append(id); return }
        var syms: [Int] = []
        var unk = -1 // pending unk id (fused)
        var i = 0
        while i < word.count {
            let n = UTF16.isLeadSurrogate(word[i]) && i + 1 < word.count && UTF16.isTrailSurrogate(word[i + 1]) ? 2 : 1
            let ch = Array(word[i..<(i + n)])
            i += n
            if let id = vocab[ch] {
                if unk >= 0 { syms.append(unk); unk = -1 }
                syms.append(id)
                continue
            }
            if byteFallback {
                let ids = Self.utf8(ch).map { vocab[Array(Self.byteToken(Int($0)).utf16)] }
                if ids.allSatisfy({ $0 != nil }) { ids.forEach { syms.append($0!) }; continue } // a pending unk stays pending, as in the library
            }
            guard let u = unkId else { continue }
            if unk >= 0 && !fuseUnk { syms.append(unk) }
            unk = u
        }
        if unk >= 0 { syms.append(unk) }
        mergeAll(&syms)
        out.append(contentsOf: syms)
    }

    /// `Word::merge_all`: lowest rank first, then leftmost, through a priority queue.
    private func mergeAll(_ syms: inout [Int]) {
        let n = syms.count
        if n < 2 || merges.isEmpty { return }
        var c = syms
        var prev = (0..<n).map { $0 - 1 }
        var next = (0..<n).map { $0 + 1 < n ? $0 + 1 : -1 }
        var alive = [Bool](repeating: true, count: n)
        var queue = MergeQueue() // rank, pos, new id
        for k in 0..<(n - 1) { if let m = merges[Self.key(c[k], c[k + 1])] { queue.push((m.rank, k, m.id)) } }
        while let top = queue.pop() {
            let pos = top.pos
            if !alive[pos] || next[pos] == -1 { continue }
            let right = next[pos]
            guard let m = merges[Self.key(c[pos], c[right])], m.id == top.id else { continue }
            c[pos] = top.id
            alive[right] = false
            next[pos] = next[right]
            if next[right] >= 0 { prev[next[right]] = pos }
            if prev[pos] >= 0, let m = merges[Self.key(c[prev[pos]], c[pos])] { queue.push((m.rank, prev[pos], m.id)) }
            if next[pos] >= 0, let m = merges[Self.key(c[pos], c[next[pos]])] { queue.push((m.rank, pos, m.id)) }
        }
        syms.removeAll()
        var k = 0
        while k >= 0 { syms.append(c[k]); k = next[k] }
    }

    /// A binary min-heap on (rank, pos): java.util.PriorityQueue in the Kotlin core.
    private struct MergeQueue {
        private var h: [(rank: Int, pos: Int, id: Int)] = []
        private static func less(_ a: (rank: Int, pos: Int, id: Int), _ b: (rank: Int, pos: Int, id: Int)) -> Bool {
            a.rank != b.rank ? a.rank < b.rank : a.pos < b.pos
        }
        mutating func push(_ e: (rank: Int, pos: Int, id: Int)) {
            h.append(e)
            var i = h.count - 1
            while i > 0 {
                let p = (i - 1) / 2
                if !Self.less(h[i], h[p]) { break }
                h.swapAt(i, p)
                i = p
            }
        }
        mutating func pop() -> (rank: Int, pos: Int, id: Int)? {
            guard let top = h.first else { return nil }
            let last = h.removeLast()
            if !h.isEmpty {
                h[0] = last
                var i = 0
                while true {
                    let l = 2 * i + 1, r = l + 1
                    var m = i
                    if l < h.count && Self.less(h[l], h[m]) { m = l }
                    if r < h.count && Self.less(h[r], h[m]) { m = r }
                    if m == i { break }
                    h.swapAt(i, m)
                    i = m
                }
            }
            return top
        }
    }

    // ---- pipeline components ----

    private func buildNormalizer(_ v: JSONValue) throws -> Step<U16> {
        guard let o = v.objectValue else { throw Self.unsupported("normalizer \(v)") }
        switch o.str("type") ?? "" {
        case "Sequence":
            guard let list = o["normalizers"]?.arrayValue else { throw Self.unsupported("normalizer Sequence without normalizers") }
            let parts = try list.map { try buildNormalizer($0) }
            return { s in parts.reduce(s) { acc, f in f(acc) } }
        case "Prepend":
            guard let p = o["prepend"]?.jsonString?.units else { throw Self.unsupported("normalizer Prepend without prepend") }
            return { s in s.isEmpty ? s : p + s }
        case "Replace":
            let pat = try Self.stringPattern(o, "normalizer Replace")
            guard let content = o["content"]?.jsonString?.units else { throw Self.unsupported("normalizer Replace without content") }
            return { s in Self.replace(s, pat, content) }
        default: throw Self.unsupported("normalizer \(o.str("type") ?? "?")")
        }
    }

    private func buildPreTokenizer(_ v: JSONValue) throws -> Step<[Piece]> {
        guard let o = v.objectValue else { throw Self.unsupported("pre_tokenizer \(v)") }
        switch o.str("type") ?? "" {
        case "Sequence":
            guard let list = o["pretokenizers"]?.arrayValue else { throw Self.unsupported("pre_tokenizer Sequence without pretokenizers") }
            let parts = try list.map { try buildPreTokenizer($0) }
            return { ps in parts.reduce(ps) { acc, f in f(acc) } }
        case "ByteLevel":
            let prefixSpace = try Self.bool(o, "add_prefix_space", true)
            let useRegex = try Self.bool(o, "use_regex", true)
            return { ps in
                ps.flatMap { p -> [Piece] in
                    let t = prefixSpace && p.text.first != 0x20 ? Piece(text: [0x20] + p.text, atStart: p.atStart) : p
                    return useRegex ? Self.split(t, Self.gpt2Pattern, nil, "Isolated", false) : [t]
                }.map { Piece(text: Self.byteLevel($0.text), atStart: $0.atStart) }
            }
        case "Split":
            guard let pat = o.obj("pattern") else { throw Self.unsupported("pre_tokenizer Split without pattern") }
            let regex = try pat["Regex"]?.jsonString.map { try Self.compileRegex($0.string) }
            var literal: U16?
            if regex == nil {
                guard let l = pat["String"]?.jsonString?.units else { throw Self.unsupported("pre_tokenizer Split pattern \(pat)") }
                if l.isEmpty { throw Self.unsupported("pre_tokenizer Split with an empty pattern") }
                literal = l
            }
            guard let behavior = o.str("behavior"), Self.behaviors.contains(behavior) else {
                throw Self.unsupported("pre_tokenizer Split behavior \(o.str("behavior") ?? "?")")
            }
            let invert = try Self.bool(o, "invert", false)
            return { ps in ps.flatMap { Self.split($0, regex, literal, behavior, invert) } }
        case "Metaspace":
            guard let rep = o["replacement"]?.jsonString?.units else { throw Self.unsupported("pre_tokenizer Metaspace without replacement") }
            if Self.codePointCount(rep) != 1 { throw Self.unsupported("pre_tokenizer Metaspace replacement '\(Self.text(rep))'") }
            let scheme = try Self.metaspaceScheme(o)
            let doSplit = try Self.bool(o, "split", true)
            return { ps in
                ps.flatMap { p -> [Piece] in
                    var t = Self.replace(p.text, [0x20], rep)
                    if !Self.startsWith(t, rep, at: 0) && (scheme == "always" || (scheme == "first" && p.atStart)) { t = rep + t }
                    let q = Piece(text: t, atStart: p.atStart)
                    return doSplit ? Self.split(q, nil, rep, "MergedWithNext", false) : [q]
                }
            }
        default: throw Self.unsupported("pre_tokenizer \(o.str("type") ?? "?")")
        }
    }

    private func buildPostProcessor(_ v: JSONValue) throws -> [Step<[Int]>] {
        guard let o = v.objectValue else { throw Self.unsupported("post_processor \(v)") }
        switch o.str("type") ?? "" {
        case "Sequence":
            guard let list = o["processors"]?.arrayValue else { throw Self.unsupported("post_processor Sequence without processors") }
            return try list.flatMap { try buildPostProcessor($0) }
        case "ByteLevel": return [] // offsets only
        case "TemplateProcessing":
            let specials = o.obj("special_tokens") ?? JSONObject()
            var before: [Int] = []
            var after: [Int] = []
            var seenA = false
            guard let single = o["single"]?.arrayValue else { throw Self.unsupported("post_processor TemplateProcessing without single") }
            for item in single {
                guard let it = item.objectValue else { throw Self.unsupported("template item \(item)") }
                if let st = it.obj("SpecialToken") {
                    let name = st.str("id") ?? ""
                    guard let ids = specials.obj(name)?["ids"]?.arrayValue else { throw Self.unsupported("template special token \(name) without ids") }
                    let v = try ids.map { try Self.int($0, "template id") }
                    if seenA { after += v } else { before += v }
                } else if let seq = it.obj("Sequence"), seq.str("id") == "A", !seenA {
                    seenA = true
                } else {
                    throw Self.unsupported("template item \(it)")
                }
            }
            if !seenA { throw Self.unsupported("template without $A") }
            return [{ ids in before + ids + after }]
        default: throw Self.unsupported("post_processor \(o.str("type") ?? "?")")
        }
    }

    private func buildDecoder(_ v: JSONValue) throws -> Step<[U16]> {
        guard let o = v.objectValue else { throw Self.unsupported("decoder \(v)") }
        switch o.str("type") ?? "" {
        case "Sequence":
            guard let list = o["decoders"]?.arrayValue else { throw Self.unsupported("decoder Sequence without decoders") }
            let parts = try list.map { try buildDecoder($0) }
            return { ts in parts.reduce(ts) { acc, f in f(acc) } }
        case "ByteLevel":
            return { ts in
                var bytes: [UInt8] = []
                for t in ts {
                    let mapped = t.map { Self.charToByte[$0] }
                    if mapped.allSatisfy({ $0 != nil }) { bytes += mapped.map { $0! } } else { bytes += Self.utf8(t) }
                }
                return [Self.utf8Lossy(bytes)]
            }
        case "ByteFallback":
            return { ts in
                var out: [U16] = []
                var pending: [UInt8] = []
                func flush() {
                    if pending.isEmpty { return }
                    if let s = Self.utf8Strict(pending) { out.append(s) } else { for _ in pending { out.append([0xFFFD]) } }
                    pending = []
                }
                for t in ts {
                    let b = Self.byteOfToken(t)
                    if b >= 0 { pending.append(UInt8(b)); continue }
                    flush()
                    out.append(t)
                }
                flush()
                return out
            }
        case "Fuse":
            return { ts in [Array(ts.joined())] }
        case "Strip":
            guard let content = o["content"]?.jsonString?.units else { throw Self.unsupported("decoder Strip without content") }
            if Self.codePointCount(content) != 1 { throw Self.unsupported("decoder Strip content '\(Self.text(content))'") }
            let c = Self.codePoints(content)[0]
            let start = try Self.int(o["start"], "decoder Strip start")
            let stop = try Self.int(o["stop"], "decoder Strip stop")
            return { ts in
                ts.map { t in
                    let cps = Self.codePoints(t)
                    var a = 0
                    while a < start && a < cps.count && cps[a] == c { a += 1 }
                    var z = cps.count
                    var k = 0
                    while k < stop && z > a && cps[z - 1] == c { z -= 1; k += 1 }
                    return Self.units(Array(cps[a..<z]))
                }
            }
        case "Replace":
            let pat = try Self.stringPattern(o, "decoder Replace")
            guard let content = o["content"]?.jsonString?.units else { throw Self.unsupported("decoder Replace without content") }
            return { ts in ts.map { Self.replace($0, pat, content) } }
        case "Metaspace":
            guard let rep = o["replacement"]?.jsonString?.units else { throw Self.unsupported("decoder Metaspace without replacement") }
            if Self.codePointCount(rep) != 1 { throw Self.unsupported("decoder Metaspace replacement '\(Self.text(rep))'") }
            let scheme = try Self.metaspaceScheme(o)
            return { ts in
                ts.enumerated().map { i, t in
                    // the library drops every replacement char of the first token unless the scheme is "never"
                    i == 0 && scheme != "never" ? Self.replace(t, rep, []) : Self.replace(t, rep, [0x20])
                }
            }
        default: throw Self.unsupported("decoder \(o.str("type") ?? "?")")
        }
    }

    private static func metaspaceScheme(_ o: JSONObject) throws -> String {
        guard let s = o["prepend_scheme"], !isNull(s) else { return try bool(o, "add_prefix_space", true) ? "always" : "never" }
        guard let v = s.stringValue, ["always", "first", "never"].contains(v) else { throw unsupported("Metaspace prepend_scheme \(s)") }
        return v
    }

    private static func stringPattern(_ o: JSONObject, _ what: String) throws -> U16 {
        guard let p = o.obj("pattern") else { throw unsupported("\(what) without pattern") }
        guard let s = p["String"]?.jsonString?.units else { throw unsupported("\(what) pattern \(p) (only String patterns)") }
        if s.isEmpty { throw unsupported("\(what) with an empty pattern") }
        return s
    }

    /// The library's `NormalizedString::split` with a regex or literal pattern; empty pieces are dropped.
    fileprivate static func split(_ p: Piece, _ regex: NSRegularExpression?, _ literal: U16?, _ behavior: String, _ invert: Bool) -> [Piece] {
        let s = p.text
        var spans: [(Int, Int, Int)] = [] // start, end, isMatch covering s
        var last = 0
        func match(_ a: Int, _ b: Int) {
            if a > last { spans.append((last, a, 0)) }
            spans.append((a, b, 1))
            last = b
        }
        if let regex = regex {
            let ns = NSString(characters: s, length: s.count)
            for m in regex.matches(in: ns as String, range: NSRange(location: 0, length: s.count)) where m.range.length > 0 {
                match(m.range.location, m.range.location + m.range.length)
            }
        } else if let lit = literal {
            var i = indexOf(s, lit, from: 0)
            while i >= 0 { match(i, i + lit.count); i = indexOf(s, lit, from: i + lit.count) }
        }
        if last < s.count { spans.append((last, s.count, 0)) }
        if invert { spans = spans.map { ($0.0, $0.1, 1 - $0.2) } }
        var pieces: [(Int, Int)] = []
        switch behavior {
        case "Removed": pieces = spans.filter { $0.2 == 0 }.map { ($0.0, $0.1) }
        case "Isolated": pieces = spans.map { ($0.0, $0.1) }
        case "MergedWithPrevious":
            var prevMatch = false
            for sp in spans {
                if sp.2 == 1 && !prevMatch && !pieces.isEmpty { pieces[pieces.count - 1].1 = sp.1 } else { pieces.append((sp.0, sp.1)) }
                prevMatch = sp.2 == 1
            }
        case "MergedWithNext":
            var prevMatch = false
            for sp in spans.reversed() {
                if sp.2 == 1 && !prevMatch && !pieces.isEmpty { pieces[pieces.count - 1].0 = sp.0 } else { pieces.append((sp.0, sp.1)) }
                prevMatch = sp.2 == 1
            }
            pieces.reverse()
        default: // Contiguous
            var prevMatch = -1
            for sp in spans {
                if sp.2 == prevMatch && !pieces.isEmpty { pieces[pieces.count - 1].1 = sp.1 } else { pieces.append((sp.0, sp.1)) }
                prevMatch = sp.2
            }
        }
        return pieces.filter { $0.1 > $0.0 }.map { Piece(text: Array(s[$0.0..<$0.1]), atStart: p.atStart && $0.0 == 0) }
    }

    // ---- helpers ----

    private static let behaviors: Set<String> = ["Removed", "Isolated", "MergedWithPrevious", "MergedWithNext", "Contiguous"]
    private static let gpt2Regex = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"
    private static let gpt2Pattern: NSRegularExpression = try! compileRegex(gpt2Regex)

    /// ICU with `\s` / `\S` as the White_Space property (java.util.regex UNICODE_CHARACTER_CLASS, Oniguruma).
    static func compileRegex(_ p: String) throws -> NSRegularExpression {
        var out = ""
        var escaped = false
        for ch in p.unicodeScalars {
            if escaped {
                out += ch == "s" ? "p{White_Space}" : ch == "S" ? "P{White_Space}" : String(ch)
                escaped = false
            } else {
                out.unicodeScalars.append(ch)
                escaped = ch == "\\"
            }
        }
        do { return try NSRegularExpression(pattern: out) } catch { throw unsupported("regex \(p) (\(error))") }
    }

    private static func unsupported(_ what: String) -> TokenizerError { TokenizerError(message: "unsupported in tokenizer.json: \(what)") }

    private static func isNull(_ v: JSONValue) -> Bool { if case .null = v { return true }; return false }

    private static func bool(_ o: JSONObject, _ k: String, _ def: Bool) throws -> Bool {
        guard let v = o[k], !isNull(v) else { return def }
        guard let b = v.boolValue else { throw unsupported("\(k) = \(v)") }
        return b
    }

    private static func int(_ v: JSONValue?, _ what: String) throws -> Int {
        guard let v = v, case .int(let l) = v, l >= 0, l <= Int64(Int32.max) else { throw unsupported("\(what) \(String(describing: v))") }
        return Int(l)
    }

    private static func key(_ a: Int, _ b: Int) -> Int64 { (Int64(a) << 32) | (Int64(b) & 0xffff_ffff) }

    private static let byteTokens: [String] = (0..<256).map { String(format: "<0x%02X>", $0) }

    private static func byteToken(_ b: Int) -> String { byteTokens[b] }

    /// The byte of a `<0xNN>` token as the ByteFallback decoder reads it (Rust `u8::from_str_radix`), else -1.
    private static func byteOfToken(_ t: U16) -> Int {
        if t.count != 6 || !startsWith(t, Array("<0x".utf16), at: 0) || t[5] != 0x3E { return -1 }
        var digits = Array(t[3..<5])
        if digits[0] == 0x2B { digits.removeFirst() } // '+'
        var v = 0
        for u in digits {
            guard let d = Int(String(UnicodeScalar(u)!), radix: 16) else { return -1 }
            v = v * 16 + d
        }
        return v
    }

    /// GPT-2's reversible byte -> printable character table.
    public static let byteToChar: [UInt16] = {
        var t = [UInt16](repeating: 0, count: 256)
        var n: UInt16 = 0
        for b in 0..<256 {
            let printable = (0x21...0x7E).contains(b) || (0xA1...0xAC).contains(b) || (0xAE...0xFF).contains(b)
            if printable { t[b] = UInt16(b) } else { t[b] = 256 + n; n += 1 }
        }
        return t
    }()

    private static let charToByte: [UInt16: UInt8] = {
        var m: [UInt16: UInt8] = [:]
        for (b, c) in byteToChar.enumerated() { m[c] = UInt8(b) }
        return m
    }()

    private static func byteLevel(_ s: U16) -> U16 { utf8(s).map { byteToChar[Int($0)] } }

    static func text(_ u: U16) -> String { String(decoding: u, as: UTF16.self) }
    static func utf8(_ u: U16) -> [UInt8] { Array(text(u).utf8) }

    private static func checkUnicode(_ s: U16) throws {
        var i = 0
        while i < s.count {
            let c = s[i]
            if UTF16.isLeadSurrogate(c) && i + 1 < s.count && UTF16.isTrailSurrogate(s[i + 1]) { i += 2; continue }
            if UTF16.isLeadSurrogate(c) || UTF16.isTrailSurrogate(c) {
                throw TokenizerError(message: String(format: "text has a lone surrogate U+%04X at index %d", c, i))
            }
            i += 1
        }
    }

    static func startsWith(_ s: U16, _ p: U16, at i: Int) -> Bool {
        if i + p.count > s.count { return false }
        for k in 0..<p.count where s[i + k] != p[k] { return false }
        return true
    }

    static func indexOf(_ s: U16, _ p: U16, from: Int) -> Int {
        if p.isEmpty { return -1 }
        var i = from
        while i + p.count <= s.count { if startsWith(s, p, at: i) { return i }; i += 1 }
        return -1
    }

    /// Every non-overlapping occurrence of `p` (left to right) replaced by `r` (Rust `str::replace`).
    static func replace(_ s: U16, _ p: U16, _ r: U16) -> U16 {
        var out: U16 = []
        var last = 0
        var i = indexOf(s, p, from: 0)
        while i >= 0 { out += s[last..<i]; out += r; last = i + p.count; i = indexOf(s, p, from: last) }
        out += s[last...]
        return out
    }

    private static func splitOnSpace(_ s: U16) -> [U16] { s.split(separator: 0x20, omittingEmptySubsequences: false).map { Array($0) } }

    private static func codePoints(_ s: U16) -> [UInt32] { text(s).unicodeScalars.map { $0.value } }
    private static func codePointCount(_ s: U16) -> Int { text(s).unicodeScalars.count }
    private static func units(_ cps: [UInt32]) -> U16 {
        var out = String.UnicodeScalarView()
        for c in cps { out.append(Unicode.Scalar(c)!) }
        return Array(String(out).utf16)
    }

    /// Strict UTF-8 (Rust `String::from_utf8`): nil when `b` is not valid UTF-8.
    static func utf8Strict(_ b: [UInt8]) -> U16? {
        let s = utf8Lossy(b)
        return !s.contains(0xFFFD) || utf8(s) == b ? s : nil
    }

    /// Lossy UTF-8 (Rust `String::from_utf8_lossy`): each maximal invalid subpart becomes one U+FFFD.
    static func utf8Lossy(_ b: [UInt8]) -> U16 {
        var cps: [UInt32] = []
        var i = 0
        while i < b.count {
            let b0 = Int(b[i])
            if b0 < 0x80 { cps.append(UInt32(b0)); i += 1; continue }
            let need: Int
            var lo = 0x80
            var hi = 0xBF
            var cp: Int
            switch b0 {
            case 0xC2...0xDF: need = 1; cp = b0 & 0x1F
            case 0xE0...0xEF: need = 2; cp = b0 & 0x0F; if b0 == 0xE0 { lo = 0xA0 }; if b0 == 0xED { hi = 0x9F }
            case 0xF0...0xF4: need = 3; cp = b0 & 0x07; if b0 == 0xF0 { lo = 0x90 }; if b0 == 0xF4 { hi = 0x8F }
            default: cps.append(0xFFFD); i += 1; continue
            }
            var j = i + 1
            var ok = true
            for _ in 0..<need {
                let x = j < b.count ? Int(b[j]) : -1
                if x < lo || x > hi { ok = false; break }
                cp = (cp << 6) | (x & 0x3F)
                j += 1
                lo = 0x80; hi = 0xBF
            }
            cps.append(ok ? UInt32(cp) : 0xFFFD)
            i = j
        }
        return units(cps)
    }
}

/// Text of a growing id sequence for streaming output: each `append` returns what the new id adds
/// to `decode(all ids)`, holding text back while it ends in an incomplete character (U+FFFD) or while
/// the decoded text is not yet an extension of what was returned. `finish` returns the rest.
public struct StreamingDecoder {
    private let tokenizer: Tokenizer
    private let skipSpecialTokens: Bool
    private var ids: [Int] = []
    private var emitted: U16 = []
    private var text: U16 = []

    public init(_ tokenizer: Tokenizer, skipSpecialTokens: Bool = true) {
        self.tokenizer = tokenizer
        self.skipSpecialTokens = skipSpecialTokens
    }

    public mutating func append(_ id: Int) -> String {
        ids.append(id)
        text = tokenizer.decodeUnits(ids, skipSpecialTokens: skipSpecialTokens)
        if text.last == 0xFFFD || !Tokenizer.startsWith(text, emitted, at: 0) { return "" }
        let piece = Array(text[emitted.count...])
        emitted = text
        return Tokenizer.text(piece)
    }

    /// The rest of the text (what `append` held back), when it extends what was returned.
    public mutating func finish() -> String {
        let piece = Tokenizer.startsWith(text, emitted, at: 0) ? Array(text[emitted.count...]) : []
        emitted = text
        return Tokenizer.text(piece)
    }
}
