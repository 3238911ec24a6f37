package dev.loragen.core

import java.io.File
import java.util.PriorityQueue
import java.util.regex.Pattern

/** A tokenizer.json the phone tokenizer cannot reproduce exactly, or text it cannot encode. */
class TokenizerException(message: String) : IllegalArgumentException(message)

/**
 * The Hugging Face `tokenizer.json` pipeline for BPE models, giving the ids and text of the
 * `tokenizers` library (tested against it on random strings by TokenizerTest):
 *
 *  - added/special tokens split first (leftmost-longest; `normalized` tokens after the normalizer);
 *  - normalizers `Sequence`, `Prepend`, `Replace` (string pattern);
 *  - pre-tokenizers `Sequence`, `ByteLevel` (GPT-2 regex, byte-to-unicode), `Split` (regex or string,
 *    every split behavior, invert), `Metaspace` (prepend_scheme always/first/never, split);
 *  - model `BPE`: ranked merges (the library's priority-queue order), `ignore_merges`,
 *    `byte_fallback` (`<0xNN>`), `unk_token`, `fuse_unk`;
 *  - post-processors `TemplateProcessing` (single sequence), `ByteLevel`, `Sequence`;
 *  - decoders `ByteLevel`, `ByteFallback`, `Fuse`, `Strip`, `Replace` (string), `Metaspace`, `Sequence`.
 *
 * That covers byte-level BPE (GPT-2, Llama-3) and SentencePiece-style BPE (Llama-2/TinyLlama, Gemma,
 * Metaspace). Anything else in the file (another model type, normalizer, regex replace, dropout,
 * truncation, added tokens with lstrip/rstrip/single_word...) is refused at load with a
 * [TokenizerException] naming it; nothing is approximated. Regex patterns run on java.util.regex with
 * UNICODE_CHARACTER_CLASS; the GPT-2 and Llama-3 patterns give the library's splits (tested).
 * Text with a lone surrogate is refused by [encode], as the Python library refuses it.
 */
class Tokenizer private constructor(json: JsonObject) {
    private class Added(val content: String, val id: Int, val special: Boolean, val normalized: Boolean)
    private class Piece(val text: String, val atStart: Boolean, val id: Int = -1)

    private val vocab = HashMap<String, Int>()
    private var idToToken: Array<String?> = emptyArray()
    private val merges = HashMap<Long, LongArray>() // (left id, right id) -> [rank, new id]
    private val ignoreMerges: Boolean
    private val byteFallback: Boolean
    private val fuseUnk: Boolean
    private val unkId: Int?
    private val added = ArrayList<Added>()
    private val addedById = HashMap<Int, Added>()
    private val specialContents = HashSet<String>()
    private val rawMatcher: Matcher
    private val normalizedMatcher: Matcher
    private val normalizer: (String) -> String
    private val preTokenizer: (List<Piece>) -> List<Piece>
    private val postProcessor: (IntArray) -> IntArray
    private val decoder: ((List<String>) -> List<String>)?

    /** The first id the post-processor puts before the text (e.g. `<s>`), if any. */
    val bosId: Int?
    /** The end-of-sequence token among the added tokens (`</s>`, `<eos>`, `<|end_of_text|>`, ...), if any. */
    val eosId: Int?
    val vocabSize: Int get() = idToToken.size

    init {
        for (k in listOf("truncation", "padding")) if (json[k] != null) unsupported("$k (must be null)")
        val model = json.obj("model") ?: unsupported("a tokenizer.json without a model")
        if (model.str("type") != "BPE") unsupported("model type ${model["type"]}")
        val dropout = model["dropout"]
        if (dropout != null && JsonValues.num(dropout) != 0.0) unsupported("BPE dropout $dropout")
        for (k in listOf("continuing_subword_prefix", "end_of_word_suffix")) if (model[k] != null) unsupported("BPE $k")
        ignoreMerges = bool(model, "ignore_merges", false)
        byteFallback = bool(model, "byte_fallback", false)
        fuseUnk = bool(model, "fuse_unk", false)
        val v = model.obj("vocab") ?: unsupported("a BPE model without a vocab")
        var maxId = -1
        for ((k, idv) in v.entries) {
            val id = int(idv, "vocab id of $k")
            vocab[k] = id
            maxId = maxOf(maxId, id)
        }
        val addedJson = json["added_tokens"] as? List<*> ?: emptyList<Any?>()
        for (t in addedJson) {
            val o = t as? JsonObject ?: unsupported("an added token that is not an object")
            val content = o.str("content") ?: unsupported("an added token without content")
            for (k in listOf("single_word", "lstrip", "rstrip")) if (bool(o, k, false)) unsupported("added token $k ($content)")
            if (content.isEmpty()) unsupported("an empty added token")
            val a = Added(content, int(o["id"], "added token id"), bool(o, "special", false), bool(o, "normalized", false))
            added.add(a)
            addedById[a.id] = a
            if (a.special) specialContents.add(content)
            maxId = maxOf(maxId, a.id)
        }
        idToToken = arrayOfNulls(maxId + 1)
        for ((k, id) in vocab) idToToken[id] = k
        val unk = model["unk_token"]
        unkId = if (unk == null) null else vocab[unk as? String ?: unsupported("unk_token $unk")] ?: unsupported("unk_token $unk not in the vocab")
        (model["merges"] as? List<*> ?: emptyList<Any?>()).forEachIndexed { rank, m ->
            val pair = when (m) {
                is String -> m.split(' ').also { if (it.size != 2) unsupported("merge '$m'") }
                is List<*> -> m.map { it as? String ?: unsupported("merge $m") }.also { if (it.size != 2) unsupported("merge $m") }
                else -> unsupported("merge $m")
            }
            val a = vocab[pair[0]] ?: unsupported("merge $m: ${pair[0]} not in the vocab")
            val b = vocab[pair[1]] ?: unsupported("merge $m: ${pair[1]} not in the vocab")
            val n = vocab[pair[0] + pair[1]] ?: unsupported("merge $m: ${pair[0] + pair[1]} not in the vocab")
            merges[key(a, b)] = longArrayOf(rank.toLong(), n.toLong())
        }
        normalizer = json["normalizer"]?.let { buildNormalizer(it) } ?: { s -> s }
        preTokenizer = json["pre_tokenizer"]?.let { buildPreTokenizer(it) } ?: { p -> p }
        val processors = json["post_processor"]?.let { buildPostProcessor(it) } ?: emptyList()
        postProcessor = { ids -> processors.fold(ids) { acc, f -> f(acc) } }
        decoder = json["decoder"]?.let { buildDecoder(it) }
        rawMatcher = Matcher(added.filter { !it.normalized }.map { it.content to it.id })
        normalizedMatcher = Matcher(added.filter { it.normalized }.map { normalizer(it.content) to it.id })
        val prefix = postProcessor(IntArray(0))
        bosId = prefix.firstOrNull()
        eosId = EOS_NAMES.firstNotNullOfOrNull { n -> added.firstOrNull { it.content == n }?.id }
    }

    /** Token ids of [text], as `Tokenizer.encode(text, add_special_tokens=...).ids` in Python. */
    fun encode(text: String, addSpecialTokens: Boolean = true): IntArray {
        checkUnicode(text)
        // 1. added tokens matched on the raw text, 2. normalizer, then `normalized` added tokens
        val pieces = ArrayList<Piece>()
        for (p in rawMatcher.split(Piece(text, true))) {
            if (p.id >= 0) { pieces.add(p); continue }
            pieces.addAll(normalizedMatcher.split(Piece(normalizer(p.text), p.atStart)))
        }
        val out = ArrayList<Int>()
        for (p in pieces) {
            if (p.id >= 0) { out.add(p.id); continue }
            for (w in preTokenizer(listOf(p))) bpe(w.text, out)
        }
        val ids = out.toIntArray()
        return if (addSpecialTokens) postProcessor(ids) else ids
    }

    /** Text of [ids], as `Tokenizer.decode(ids, skip_special_tokens=...)` in Python (unknown ids are dropped). */
    fun decode(ids: IntArray, skipSpecialTokens: Boolean = true): String {
        val tokens = ArrayList<String>(ids.size)
        for (id in ids) {
            val t = idToToken(id) ?: continue
            if (skipSpecialTokens && t in specialContents) continue
            tokens.add(t)
        }
        val d = decoder ?: return tokens.joinToString(" ")
        return d(tokens).joinToString("")
    }

    fun isSpecial(id: Int): Boolean = addedById[id]?.special == true
    /** The token string of [id]; a `normalized` added token reads as its normalized content, as in the library. */
    fun idToToken(id: Int): String? = addedById[id]?.let { if (it.normalized) normalizer(it.content) else it.content } ?: idToToken.getOrNull(id)
    fun tokenToId(token: String): Int? = added.firstOrNull { it.content == token }?.id ?: vocab[token]

    // ---- added tokens ----

    /** Leftmost-longest matching of the added tokens (the library's Aho-Corasick `LeftmostLongest`). */
    private class Matcher(tokens: List<Pair<String, Int>>) {
        private val byFirst = HashMap<Char, MutableList<Pair<String, Int>>>()

        init {
            for (t in tokens) if (t.first.isNotEmpty()) byFirst.getOrPut(t.first[0]) { ArrayList() }.add(t)
            for (l in byFirst.values) l.sortByDescending { it.first.length }
        }

        fun split(p: Piece): List<Piece> {
            val s = p.text
            if (byFirst.isEmpty()) return if (s.isEmpty()) emptyList() else listOf(p)
            val out = ArrayList<Piece>()
            var start = 0
            var i = 0
            while (i < s.length) {
                val hit = byFirst[s[i]]?.firstOrNull { s.startsWith(it.first, i) }
                if (hit == null) { i++; continue }
                if (i > start) out.add(Piece(s.substring(start, i), p.atStart && start == 0))
                out.add(Piece(hit.first, false, hit.second))
                i += hit.first.length
                start = i
            }
            if (start < s.length) out.add(Piece(s.substring(start), p.atStart && start == 0))
            return out
        }
    }

    // ---- model ----

    /** The library's `BPE::tokenize` for one pre-tokenized word, ids appended to [out]. */
    private fun bpe(word: String, out: MutableList<Int>) {
        if (word.isEmpty()) return
        if (ignoreMerges) vocab[word]?.let { out.add(it); return }
        val syms = ArrayList<Int>()
        var unk = -1 // pending unk id (fused)
        var i = 0
        while (i < word.length) {
            val cp = word.codePointAt(i)
            val ch = word.substring(i, i + Character.charCount(cp))
            i += ch.length
            val id = vocab[ch]
            if (id != null) {
                if (unk >= 0) { syms.add(unk); unk = -1 }
                syms.add(id)
                continue
            }
            if (byteFallback) {
                val bytes = ch.toByteArray(Charsets.UTF_8)
                val ids = bytes.map { vocab[byteToken(it.toInt() and 0xff)] }
                if (ids.all { it != null }) { ids.forEach { syms.add(it!!) }; continue } // a pending unk stays pending, as in the library
            }
            val u = unkId ?: continue
            if (unk >= 0 && !fuseUnk) syms.add(unk)
            unk = u
        }
        if (unk >= 0) syms.add(unk)
        mergeAll(syms)
        out.addAll(syms)
    }

    /** `Word::merge_all`: lowest rank first, then leftmost, through a priority queue. */
    private fun mergeAll(syms: MutableList<Int>) {
        val n = syms.size
        if (n < 2 || merges.isEmpty()) return
        val c = syms.toIntArray()
        val prev = IntArray(n) { it - 1 }
        val next = IntArray(n) { if (it + 1 < n) it + 1 else -1 }
        val alive = BooleanArray(n) { true }
        val queue = PriorityQueue<LongArray>(compareBy<LongArray>({ it[0] }, { it[1] })) // rank, pos, new id
        for (k in 0 until n - 1) merges[key(c[k], c[k + 1])]?.let { queue.add(longArrayOf(it[0], k.toLong(), it[1])) }
        while (true) {
            val top = queue.poll() ?: break
            val pos = top[1].toInt()
            if (!alive[pos] || next[pos] == -1) continue
            val right = next[pos]
            val m = merges[key(c[pos], c[right])]
            if (m == null || m[1] != top[2]) continue
            c[pos] = top[2].toInt()
            alive[right] = false
            next[pos] = next[right]
            if (next[right] >= 0) prev[next[right]] = pos
            if (prev[pos] >= 0) merges[key(c[prev[pos]], c[pos])]?.let { queue.add(longArrayOf(it[0], prev[pos].toLong(), it[1])) }
            if (next[pos] >= 0) merges[key(c[pos], c[next[pos]])]?.let { queue.add(longArrayOf(it[0], pos.toLong(), it[1])) }
        }
        syms.clear()
        var k = 0
        while (k >= 0) { syms.add(c[k]); k = next[k] }
    }

    // ---- pipeline components ----

    private fun buildNormalizer(v: Any?): (String) -> String {
        val o = v as? JsonObject ?: unsupported("normalizer $v")
        return when (val type = o.str("type")) {
            "Sequence" -> {
                val parts = (o["normalizers"] as? List<*> ?: unsupported("normalizer Sequence without normalizers")).map { buildNormalizer(it) };
                { s -> parts.fold(s) { acc, f -> f(acc) } }
            }
            "Prepend" -> {
                val p = o.str("prepend") ?: unsupported("normalizer Prepend without prepend");
                { s -> if (s.isEmpty()) s else p + s }
            }
            "Replace" -> {
                val pat = stringPattern(o, "normalizer Replace")
                val content = o.str("content") ?: unsupported("normalizer Replace without content");
                { s -> s.replace(pat, content) }
            }
            else -> unsupported("normalizer $type")
        }
    }

    private fun buildPreTokenizer(v: Any?): (List<Piece>) -> List<Piece> {
        val o = v as? JsonObject ?: unsupported("pre_tokenizer $v")
        return when (val type = o.str("type")) {
            "Sequence" -> {
                val parts = (o["pretokenizers"] as? List<*> ?: unsupported("pre_tokenizer Sequence without pretokenizers")).map { buildPreTokenizer(it) };
                { ps -> parts.fold(ps) { acc, f -> f(acc) } }
            }
            "ByteLevel" -> {
                val prefixSpace = bool(o, "add_prefix_space", true)
                val useRegex = bool(o, "use_regex", true);
                { ps ->
                    ps.flatMap { p ->
                        val t = if (prefixSpace && !p.text.startsWith(" ")) Piece(" " + p.text, p.atStart) else p
                        if (useRegex) split(t, GPT2_PATTERN, null, "Isolated", false) else listOf(t)
                    }.map { Piece(byteLevel(it.text), it.atStart) }
                }
            }
            "Split" -> {
                val pat = o.obj("pattern") ?: unsupported("pre_tokenizer Split without pattern")
                val regex = pat.str("Regex")?.let { compileRegex(it) }
                val literal = if (regex == null) pat.str("String") ?: unsupported("pre_tokenizer Split pattern $pat") else null
                if (literal != null && literal.isEmpty()) unsupported("pre_tokenizer Split with an empty pattern")
                val behavior = o.str("behavior")
                if (behavior !in BEHAVIORS) unsupported("pre_tokenizer Split behavior $behavior")
                val invert = bool(o, "invert", false);
                { ps -> ps.flatMap { split(it, regex, literal, behavior!!, invert) } }
            }
            "Metaspace" -> {
                val rep = o.str("replacement") ?: unsupported("pre_tokenizer Metaspace without replacement")
                if (rep.codePointCount(0, rep.length) != 1) unsupported("pre_tokenizer Metaspace replacement '$rep'")
                val scheme = metaspaceScheme(o)
                val doSplit = bool(o, "split", true);
                { ps ->
                    ps.flatMap { p ->
                        var t = p.text.replace(" ", rep)
                        if (!t.startsWith(rep) && (scheme == "always" || (scheme == "first" && p.atStart))) t = rep + t
                        val q = Piece(t, p.atStart)
                        if (doSplit) split(q, null, rep, "MergedWithNext", false) else listOf(q)
                    }
                }
            }
            else -> unsupported("pre_tokenizer $type")
        }
    }

    private fun buildPostProcessor(v: Any?): List<(IntArray) -> IntArray> {
        val o = v as? JsonObject ?: unsupported("post_processor $v")
        return when (val type = o.str("type")) {
            "Sequence" -> (o["processors"] as? List<*> ?: unsupported("post_processor Sequence without processors")).flatMap { buildPostProcessor(it) }
            "ByteLevel" -> emptyList() // offsets only
            "TemplateProcessing" -> {
                val specials = o.obj("special_tokens") ?: JsonObject(LinkedHashMap())
                val before = ArrayList<Int>()
                val after = ArrayList<Int>()
                var seenA = false
                for (item in o["single"] as? List<*> ?: unsupported("post_processor TemplateProcessing without single")) {
                    val it = item as? JsonObject ?: unsupported("template item $item")
                    val st = it.obj("SpecialToken")
                    val seq = it.obj("Sequence")
                    when {
                        st != null -> {
                            val name = st.str("id")
                            val ids = (specials.obj(name ?: "")?.get("ids") as? List<*>) ?: unsupported("template special token $name without ids")
                            (if (seenA) after else before).addAll(ids.map { x -> int(x, "template id") })
                        }
                        seq != null && seq.str("id") == "A" && !seenA -> seenA = true
                        else -> unsupported("template item $it")
                    }
                }
                if (!seenA) unsupported("template without \$A")
                val b = before.toIntArray()
                val a = after.toIntArray()
                listOf({ ids -> b + ids + a })
            }
            else -> unsupported("post_processor $type")
        }
    }

    private fun buildDecoder(v: Any?): (List<String>) -> List<String> {
        val o = v as? JsonObject ?: unsupported("decoder $v")
        return when (val type = o.str("type")) {
            "Sequence" -> {
                val parts = (o["decoders"] as? List<*> ?: unsupported("decoder Sequence without decoders")).map { buildDecoder(it) };
                { ts -> parts.fold(ts) { acc, f -> f(acc) } }
            }
            "ByteLevel" -> { ts ->
                val bytes = java.io.ByteArrayOutputStream()
                for (t in ts) {
                    val mapped = t.map { CHAR_TO_BYTE[it] ?: -1 }
                    if (mapped.all { it >= 0 }) mapped.forEach { bytes.write(it) } else bytes.write(t.toByteArray(Charsets.UTF_8))
                }
                listOf(utf8Lossy(bytes.toByteArray()))
            }
            "ByteFallback" -> { ts ->
                val out = ArrayList<String>()
                val pending = java.io.ByteArrayOutputStream()
                fun flush() {
                    if (pending.size() == 0) return
                    val b = pending.toByteArray()
                    val s = utf8Strict(b)
                    if (s != null) out.add(s) else repeat(b.size) { out.add("\uFFFD") }
                    pending.reset()
                }
                for (t in ts) {
                    val b = byteOfToken(t)
                    if (b >= 0) { pending.write(b); continue }
                    flush()
                    out.add(t)
                }
                flush()
                out
            }
            "Fuse" -> { ts -> listOf(ts.joinToString("")) }
            "Strip" -> {
                val content = o.str("content") ?: unsupported("decoder Strip without content")
                if (content.codePointCount(0, content.length) != 1) unsupported("decoder Strip content '$content'")
                val c = content.codePointAt(0)
                val start = int(o["start"], "decoder Strip start")
                val stop = int(o["stop"], "decoder Strip stop");
                { ts ->
                    ts.map { t ->
                        val cps = t.codePoints().toArray()
                        var a = 0
                        while (a < start && a < cps.size && cps[a] == c) a++
                        var z = cps.size
                        var k = 0
                        while (k < stop && z > a && cps[z - 1] == c) { z--; k++ }
                        String(cps, a, z - a)
                    }
                }
            }
            "Replace" -> {
                val pat = stringPattern(o, "decoder Replace")
                val content = o.str("content") ?: unsupported("decoder Replace without content");
                { ts -> ts.map { it.replace(pat, content) } }
            }
            "Metaspace" -> {
                val rep = o.str("replacement") ?: unsupported("decoder Metaspace without replacement")
                if (rep.codePointCount(0, rep.length) != 1) unsupported("decoder Metaspace replacement '$rep'")
                val scheme = metaspaceScheme(o);
                { ts ->
                    ts.mapIndexed { i, t ->
                        // the library drops every replacement char of the first token unless the scheme is "never"
                        if (i == 0 && scheme != "never") t.replace(rep, "") else t.replace(rep, " ")
                    }
                }
            }
            else -> unsupported("decoder $type")
        }
    }

    private fun metaspaceScheme(o: JsonObject): String {
        val s = o["prepend_scheme"]
        if (s == null) return if (bool(o, "add_prefix_space", true)) "always" else "never"
        if (s !in listOf("always", "first", "never")) unsupported("Metaspace prepend_scheme $s")
        return s as String
    }

    private fun stringPattern(o: JsonObject, what: String): String {
        val p = o.obj("pattern") ?: unsupported("$what without pattern")
        val s = p.str("String") ?: unsupported("$what pattern ${JsonValues.render(p)} (only String patterns)")
        if (s.isEmpty()) unsupported("$what with an empty pattern")
        return s
    }

    /** The library's `NormalizedString::split` with a regex or literal pattern; empty pieces are dropped. */
    private fun split(p: Piece, regex: Pattern?, literal: String?, behavior: String, invert: Boolean): List<Piece> {
        val s = p.text
        // (start, end, isMatch) covering s
        val spans = ArrayList<IntArray>()
        var last = 0
        fun match(a: Int, b: Int) {
            if (a > last) spans.add(intArrayOf(last, a, 0))
            spans.add(intArrayOf(a, b, 1))
            last = b
        }
        if (regex != null) {
            val m = regex.matcher(s)
            while (m.find()) if (m.end() > m.start()) match(m.start(), m.end())
        } else {
            var i = s.indexOf(literal!!)
            while (i >= 0) { match(i, i + literal.length); i = s.indexOf(literal, i + literal.length) }
        }
        if (last < s.length) spans.add(intArrayOf(last, s.length, 0))
        if (invert) for (sp in spans) sp[2] = 1 - sp[2]
        val pieces = ArrayList<IntArray>() // start, end
        when (behavior) {
            "Removed" -> spans.filter { it[2] == 0 }.forEach { pieces.add(intArrayOf(it[0], it[1])) }
            "Isolated" -> spans.forEach { pieces.add(intArrayOf(it[0], it[1])) }
            "MergedWithPrevious" -> {
                var prevMatch = false
                for (sp in spans) {
                    if (sp[2] == 1 && !prevMatch && pieces.isNotEmpty()) pieces.last()[1] = sp[1] else pieces.add(intArrayOf(sp[0], sp[1]))
                    prevMatch = sp[2] == 1
                }
            }
            "MergedWithNext" -> {
                var prevMatch = false
                for (sp in spans.asReversed()) {
                    if (sp[2] == 1 && !prevMatch && pieces.isNotEmpty()) pieces.last()[0] = sp[0] else pieces.add(intArrayOf(sp[0], sp[1]))
                    prevMatch = sp[2] == 1
                }
                pieces.reverse()
            }
            "Contiguous" -> {
                var prevMatch = -1
                for (sp in spans) {
                    if (sp[2] == prevMatch && pieces.isNotEmpty()) pieces.last()[1] = sp[1] else pieces.add(intArrayOf(sp[0], sp[1]))
                    prevMatch = sp[2]
                }
            }
        }
        return pieces.filter { it[1] > it[0] }.map { Piece(s.substring(it[0], it[1]), p.atStart && it[0] == 0) }
    }

    companion object {
        fun fromJson(text: String): Tokenizer {
            val j = try {
                Json.parse(text)
            } catch (e: JsonException) {
                throw TokenizerException("tokenizer.json is not valid JSON: ${e.message}")
            }
            return Tokenizer(j as? JsonObject ?: throw TokenizerException("tokenizer.json is not a JSON object"))
        }

        fun load(file: File): Tokenizer = fromJson(file.readText(Charsets.UTF_8))

        private val EOS_NAMES = listOf("</s>", "<eos>", "<|end_of_text|>", "<|eot_id|>", "<|endoftext|>", "<|im_end|>", "<end_of_turn>")
        private val BEHAVIORS = setOf("Removed", "Isolated", "MergedWithPrevious", "MergedWithNext", "Contiguous")
        private const val GPT2_REGEX = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"
        private val GPT2_PATTERN: Pattern = compileRegex(GPT2_REGEX)

        private fun compileRegex(p: String): Pattern = try {
            Pattern.compile(p, Pattern.UNICODE_CHARACTER_CLASS)
        } catch (e: java.util.regex.PatternSyntaxException) {
            unsupported("regex ${JsonValues.quote(p)} (${e.description})")
        }

        private fun unsupported(what: String): Nothing = throw TokenizerException("unsupported in tokenizer.json: $what")

        private fun bool(o: JsonObject, k: String, default: Boolean): Boolean = when (val v = o[k]) {
            null -> default
            is Boolean -> v
            else -> unsupported("$k = $v")
        }

        private fun int(v: Any?, what: String): Int {
            val l = v as? Long ?: unsupported("$what $v")
            if (l < 0 || l > Int.MAX_VALUE) unsupported("$what $v")
            return l.toInt()
        }

        private fun key(a: Int, b: Int): Long = (a.toLong() shl 32) or (b.toLong() and 0xffffffffL)

        private val BYTE_TOKENS = Array(256) { "<0x%02X>".format(it) }

        private fun byteToken(b: Int): String = BYTE_TOKENS[b]

        /** The byte of a `<0xNN>` token as the ByteFallback decoder reads it (Rust `u8::from_str_radix`), else -1. */
        private fun byteOfToken(t: String): Int {
            if (t.length != 6 || !t.startsWith("<0x") || t[5] != '>') return -1
            val h = t.substring(3, 5)
            val digits = if (h[0] == '+') h.substring(1) else h
            var v = 0
            for (ch in digits) {
                val d = if (ch in '0'..'9' || ch in 'a'..'f' || ch in 'A'..'F') Character.digit(ch, 16) else return -1
                v = v * 16 + d
            }
            return v
        }

        /** GPT-2's reversible byte -> printable character table. */
        val BYTE_TO_CHAR: CharArray = CharArray(256).also { t ->
            var n = 0
            for (b in 0 until 256) {
                val printable = b in '!'.code..'~'.code || b in 0xA1..0xAC || b in 0xAE..0xFF
                t[b] = if (printable) b.toChar() else (256 + n++).toChar()
            }
        }
        private val CHAR_TO_BYTE: Map<Char, Int> = BYTE_TO_CHAR.withIndex().associate { it.value to it.index }

        private fun byteLevel(s: String): String {
            val b = s.toByteArray(Charsets.UTF_8)
            return String(CharArray(b.size) { BYTE_TO_CHAR[b[it].toInt() and 0xff] })
        }

        private fun checkUnicode(s: String) {
            var i = 0
            while (i < s.length) {
                val c = s[i]
                if (Character.isHighSurrogate(c) && i + 1 < s.length && Character.isLowSurrogate(s[i + 1])) { i += 2; continue }
                if (Character.isSurrogate(c)) throw TokenizerException("text has a lone surrogate U+%04X at index %d".format(c.code, i))
                i++
            }
        }

        /** Strict UTF-8 (Rust `String::from_utf8`): null when [b] is not valid UTF-8. */
        fun utf8Strict(b: ByteArray): String? {
            val s = utf8Lossy(b)
            return if (s.indexOf('\uFFFD') < 0 || s.toByteArray(Charsets.UTF_8).contentEquals(b)) s else null
        }

        /** Lossy UTF-8 (Rust `String::from_utf8_lossy`): each maximal invalid subpart becomes one U+FFFD. */
        fun utf8Lossy(b: ByteArray): String {
            val sb = StringBuilder(b.size)
            var i = 0
            while (i < b.size) {
                val b0 = b[i].toInt() and 0xff
                if (b0 < 0x80) { sb.append(b0.toChar()); i++; continue }
                val need: Int
                var lo = 0x80
                var hi = 0xBF
                var cp: Int
                when (b0) {
                    in 0xC2..0xDF -> { need = 1; cp = b0 and 0x1F }
                    in 0xE0..0xEF -> { need = 2; cp = b0 and 0x0F; if (b0 == 0xE0) lo = 0xA0; if (b0 == 0xED) hi = 0x9F }
                    in 0xF0..0xF4 -> { need = 3; cp = b0 and 0x07; if (b0 == 0xF0) lo = 0x90; if (b0 == 0xF4) hi = 0x8F }
                    else -> { sb.append('\uFFFD'); i++; continue }
                }
                var j = i + 1
                var ok = true
                for (k in 0 until need) {
                    val x = if (j < b.size) b[j].toInt() and 0xff else -1
                    if (x < lo || x > hi) { ok = false; break }
                    cp = (cp shl 6) or (x and 0x3F)
                    j++
                    lo = 0x80; hi = 0xBF
                }
                if (ok) sb.appendCodePoint(cp) else sb.append('\uFFFD')
                i = j
            }
            return sb.toString()
        }
    }
}

/**
 * Text of a growing id sequence for streaming output: each [append] returns what the new id adds
 * to `decode(all ids)`, holding text back while it ends in an incomplete character (U+FFFD) or while
 * the decoded text is not yet an extension of what was returned. [finish] returns the rest.
 */
class StreamingDecoder(private val tokenizer: Tokenizer, private val skipSpecialTokens: Boolean = true) {
    private val ids = ArrayList<Int>()
    private var emitted = ""
    private var text = ""

    fun append(id: Int): String {
        ids.add(id)
        text = tokenizer.decode(ids.toIntArray(), skipSpecialTokens)
        if (text.endsWith("\uFFFD") || !text.startsWith(emitted)) return ""
        val piece = text.substring(emitted.length)
        emitted = text
        return piece
    }

    /** The rest of the text (what [append] held back), when it extends what was returned. */
    fun finish(): String {
        val piece = if (text.startsWith(emitted)) text.substring(emitted.length) else ""
        emitted = text
        return piece
    }
}
