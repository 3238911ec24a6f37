package dev.loragen.demo.engine

import dev.loragen.core.Json
import dev.loragen.core.JsonObject
import java.io.File

/**
 * A byte-level BPE tokenizer read from a Hugging Face `tokenizer.json` (GPT-2 style: byte-to-unicode
 * alphabet, ranked merges, GPT-2 pre-tokenization regex, added/special tokens matched verbatim).
 * Used for the ONNX chat loop and to count the context tokens a system prompt would cost.
 * Not covered by the core's tests (it lives in the app, which is built in Android Studio); other
 * tokenizer models (SentencePiece/Unigram, WordPiece) are not supported.
 */
class ByteLevelBpeTokenizer(json: JsonObject) {
    private val vocab = HashMap<String, Int>()
    private val idToToken = HashMap<Int, String>()
    private val ranks = HashMap<Pair<String, String>, Int>()
    private val added = ArrayList<Pair<String, Int>>()
    val bosId: Int?
    val eosId: Int?

    init {
        val model = json.obj("model") ?: error("tokenizer.json has no model")
        require(model.str("type") == "BPE") { "only BPE tokenizers are supported (got ${model.str("type")})" }
        model.obj("vocab")?.entries?.forEach { (k, v) -> vocab[k] = (v as Long).toInt(); idToToken[(v).toInt()] = k }
        (model["merges"] as? List<*>)?.forEachIndexed { i, m ->
            val pair = when (m) {
                is String -> m.split(' ', limit = 2).let { it[0] to it[1] }
                is List<*> -> (m[0] as String) to (m[1] as String)
                else -> return@forEachIndexed
            }
            ranks[pair] = i
        }
        (json["added_tokens"] as? List<*>)?.forEach { t ->
            val o = t as? JsonObject ?: return@forEach
            val id = (o["id"] as Long).toInt()
            val content = o.str("content")!!
            added.add(content to id)
            idToToken[id] = content
        }
        added.sortByDescending { it.first.length }
        bosId = added.firstOrNull { it.first == "<s>" || it.first == "<|begin_of_text|>" || it.first == "<bos>" }?.second
        eosId = added.firstOrNull { it.first == "</s>" || it.first == "<|end_of_text|>" || it.first == "<|im_end|>" || it.first == "<eos>" }?.second
    }

    fun encode(text: String): IntArray {
        val out = ArrayList<Int>()
        var i = 0
        val plain = StringBuilder()
        fun flush() {
            if (plain.isEmpty()) return
            val m = PRETOKENIZE.matcher(plain)
            while (m.find()) out.addAll(bpe(toByteChars(m.group())))
            plain.setLength(0)
        }
        outer@ while (i < text.length) {
            for ((content, id) in added) {
                if (content.isNotEmpty() && text.startsWith(content, i)) {
                    flush(); out.add(id); i += content.length; continue@outer
                }
            }
            plain.append(text[i]); i++
        }
        flush()
        return out.toIntArray()
    }

    fun decode(ids: IntArray): String {
        val bytes = java.io.ByteArrayOutputStream()
        for (id in ids) {
            val tok = idToToken[id] ?: continue
            if (added.any { it.second == id }) { bytes.write(tok.toByteArray(Charsets.UTF_8)); continue }
            for (ch in tok) bytes.write(CHAR_TO_BYTE[ch] ?: '?'.code)
        }
        return String(bytes.toByteArray(), Charsets.UTF_8)
    }

    private fun bpe(word: String): List<Int> {
        var parts = word.map { it.toString() }.toMutableList()
        while (parts.size > 1) {
            var best = -1
            var bestRank = Int.MAX_VALUE
            for (k in 0 until parts.size - 1) {
                val r = ranks[parts[k] to parts[k + 1]] ?: continue
                if (r < bestRank) { bestRank = r; best = k }
            }
            if (best < 0) break
            parts[best] = parts[best] + parts[best + 1]
            parts.removeAt(best + 1)
        }
        return parts.map { vocab[it] ?: vocab["<unk>"] ?: 0 }
    }

    companion object {
        private val PRETOKENIZE = Regex(
            "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+",
        ).toPattern()

        /** GPT-2's reversible byte -> printable char table. */
        private val BYTE_TO_CHAR: CharArray = CharArray(256).also { t ->
            var n = 0
            for (b in 0 until 256) {
                val printable = b in '!'.code..'~'.code || b in 0xA1..0xAC || b in 0xAE..0xFF
                t[b] = if (printable) b.toChar() else (256 + n++).toChar()
            }
        }
        private val CHAR_TO_BYTE: Map<Char, Int> = BYTE_TO_CHAR.withIndex().associate { it.value to it.index }

        private fun toByteChars(s: String): String {
            val b = s.toByteArray(Charsets.UTF_8)
            return String(CharArray(b.size) { BYTE_TO_CHAR[b[it].toInt() and 0xff] })
        }

        fun load(file: File) = ByteLevelBpeTokenizer(Json.parse(file.readText()) as JsonObject)
    }
}
