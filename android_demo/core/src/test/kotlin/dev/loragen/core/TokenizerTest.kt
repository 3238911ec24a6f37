package dev.loragen.core

import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Test
import java.io.File

/**
 * The tokenizer against the Python `tokenizers` library: tools/make_tokenizer_vectors.py (run by
 * run-tests.sh into the build directory, system property `loragen.tokenizerVectors`) trains tiny BPE
 * models of each supported shape and records, for 10,000 random strings each, the library's ids
 * (with and without special tokens), decode(ids) (skipping specials and not), or that the library
 * refuses the string; plus random id sequences and their decoded text.
 */
class TokenizerTest {
    private val dir: File by lazy {
        val p = System.getProperty("loragen.tokenizerVectors") ?: error("set -Dloragen.tokenizerVectors=<dir> (run-tests.sh does)")
        File(p).also { require(File(it, "shapes.txt").isFile) { "no tokenizer vectors in $it" } }
    }

    private fun tokenizer(shape: String) = Tokenizer.load(File(dir, "$shape.tokenizer.json"))

    /** The cases of a shape, parsed once per run. */
    private fun cases(shape: String): List<*> = CASES.getOrPut(shape) {
        (Json.parse(File(dir, "$shape.vectors.json").readText()) as JsonObject)["cases"] as List<*>
    }

    private fun ints(v: Any?): IntArray = (v as List<*>).map { (it as Long).toInt() }.toIntArray()

    private fun show(s: String) = JsonValues.quote(s)

    /** Every case of [shape]; returns the number of string cases checked. */
    private fun check(shape: String): Int {
        val tok = tokenizer(shape)
        val cases = cases(shape)
        val failures = ArrayList<String>()
        var strings = 0
        var refused = 0
        for (c in cases) {
            val o = c as JsonObject
            val text = o.str("text")
            if (text == null) { // random ids
                val ids = ints(o["ids"])
                val d = tok.decode(ids)
                val all = tok.decode(ids, skipSpecialTokens = false)
                if (d != o.str("decoded") || all != o.str("decoded_all")) {
                    failures.add("decode ${ids.toList()}: ${show(d)} / ${show(all)} != ${show(o.str("decoded")!!)} / ${show(o.str("decoded_all")!!)}")
                }
                continue
            }
            strings++
            if (o["error"] == true) {
                refused++
                try {
                    tok.encode(text)
                    failures.add("encode ${show(text)}: accepted, the library refuses it")
                } catch (e: TokenizerException) {
                    assertTrue(e.message!!, e.message!!.contains("lone surrogate"))
                }
                continue
            }
            val ids = tok.encode(text)
            val plain = tok.encode(text, addSpecialTokens = false)
            val want = ints(o["ids"])
            if (!ids.contentEquals(want)) failures.add("encode ${show(text)}: ${ids.toList()} != ${want.toList()}")
            if (!plain.contentEquals(ints(o["ids_plain"]))) failures.add("encode(plain) ${show(text)}: ${plain.toList()}")
            val d = tok.decode(want)
            if (d != o.str("decoded")) failures.add("decode(encode(${show(text)})): ${show(d)} != ${show(o.str("decoded")!!)}")
            val all = tok.decode(want, skipSpecialTokens = false)
            if (all != o.str("decoded_all")) failures.add("decode(all) of ${show(text)}: ${show(all)} != ${show(o.str("decoded_all")!!)}")
        }
        if (failures.isNotEmpty()) fail("$shape: ${failures.size} mismatches, first: \n" + failures.take(8).joinToString("\n"))
        assertTrue("$shape: no refused strings in the vectors", refused > 0)
        return strings
    }

    @Test fun gpt2ByteLevelMatchesTheLibrary() = assertEquals(10000, check("gpt2"))
    @Test fun llama3ByteLevelMatchesTheLibrary() = assertEquals(10000, check("llama3"))
    @Test fun llama2SentencePieceMatchesTheLibrary() = assertEquals(10000, check("llama2"))
    @Test fun gemmaSentencePieceMatchesTheLibrary() = assertEquals(10000, check("gemma"))
    @Test fun metaspaceMatchesTheLibrary() = assertEquals(10000, check("metaspace"))
    @Test fun presetTokenizerMatchesTheLibrary() = assertEquals(10000, check("preset"))

    @Test
    fun sentencePieceSpacesAreNotUnknown() {
        // the byte-level reading of a SentencePiece vocab turned every space into <unk>
        for (shape in listOf("llama2", "gemma")) {
            val tok = tokenizer(shape)
            val unk = tok.tokenToId("<unk>")!!
            val ids = tok.encode("hello world é 你", addSpecialTokens = false)
            assertTrue("$shape: ${ids.toList()}", unk !in ids)
            assertEquals("hello world é 你", tok.decode(ids))
            assertEquals(tok.bosId, tok.encode("x")[0])
        }
        val l2 = tokenizer("llama2")
        assertEquals(1, l2.bosId)
        assertEquals(2, l2.eosId)
        assertTrue(l2.tokenToId("<0x07>")!! in l2.encode("a\u0007", addSpecialTokens = false)) // byte fallback
    }

    @Test
    fun presetTokenizerIsOneTokenPerByte() {
        val tok = tokenizer("preset")
        assertEquals(260, tok.vocabSize)
        assertEquals(1, tok.bosId)
        assertEquals(2, tok.eosId)
        assertArrayEquals(intArrayOf(1, 43, 76, 224, 131, 106, 4), tok.encode("Hi é!"))
        assertArrayEquals(intArrayOf(1, 176, 257, 250, 226, 224, 2, 224, 91), tok.encode("😀 </s> x"))
        assertEquals("😀  x", tok.decode(intArrayOf(1, 176, 257, 250, 226, 224, 2, 224, 91)))
    }

    @Test
    fun streamingDecodeAddsUpToTheWholeText() {
        for (shape in listOf("gpt2", "llama3", "llama2", "gemma", "metaspace", "preset")) {
            val tok = tokenizer(shape)
            val cases = cases(shape)
            var n = 0
            for (c in cases) {
                val o = c as JsonObject
                if (o.str("text") == null || o["error"] == true) continue
                if (n++ == 200) break
                val ids = ints(o["ids"])
                val d = StreamingDecoder(tok)
                val sb = StringBuilder()
                for (id in ids) {
                    val piece = d.append(id)
                    assertTrue("$shape: piece ends inside a character", !piece.endsWith("\uFFFD") || o.str("decoded")!!.contains('\uFFFD'))
                    sb.append(piece)
                }
                sb.append(d.finish())
                assertEquals("$shape: streamed ${ids.toList()}", o.str("decoded"), sb.toString())
            }
        }
    }

    private fun refusal(json: String): String = try {
        Tokenizer.fromJson(json)
        "accepted"
    } catch (e: TokenizerException) {
        e.message!!
    }

    @Test
    fun unsupportedComponentsAreRefusedByName() {
        val base = File(dir, "llama2.tokenizer.json").readText()
        val j = Json.parse(base) as JsonObject
        fun with(key: String, value: String): String {
            val m = LinkedHashMap(j.map)
            m[key] = Json.parse(value)
            return JsonValues.render(JsonObject(m))
        }
        assertEquals("accepted", refusal(base))
        val cases = mapOf(
            with("normalizer", """{"type":"NFKC"}""") to "normalizer NFKC",
            with("normalizer", """{"type":"Replace","pattern":{"Regex":" +"},"content":"▁"}""") to "normalizer Replace pattern",
            with("pre_tokenizer", """{"type":"Whitespace"}""") to "pre_tokenizer Whitespace",
            with("pre_tokenizer", """{"type":"Split","pattern":{"Regex":"(?<x"},"behavior":"Isolated","invert":false}""") to "regex",
            with("post_processor", """{"type":"RobertaProcessing","sep":["</s>",2],"cls":["<s>",0]}""") to "post_processor RobertaProcessing",
            with("decoder", """{"type":"WordPiece","prefix":"##","cleanup":true}""") to "decoder WordPiece",
            with("truncation", """{"max_length":8,"strategy":"LongestFirst","stride":0,"direction":"Right"}""") to "truncation",
            with("model", """{"type":"Unigram","unk_id":0,"vocab":[["<unk>",0.0]]}""") to "model type Unigram",
            with("model", """{"type":"BPE","vocab":{"a":0},"merges":[],"dropout":0.1}""") to "BPE dropout",
            with("model", """{"type":"BPE","vocab":{"a":0},"merges":[],"continuing_subword_prefix":"##"}""") to "continuing_subword_prefix",
            with("model", """{"type":"BPE","vocab":{"a":0},"merges":["a b"]}""") to "merge",
            with("added_tokens", """[{"id":0,"content":"<x>","single_word":false,"lstrip":true,"rstrip":false,"normalized":false,"special":true}]""") to "added token lstrip",
        )
        for ((json, what) in cases) {
            val msg = refusal(json)
            assertTrue("'$what' not in: $msg", msg.startsWith("unsupported in tokenizer.json: ") && msg.contains(what))
        }
        assertTrue(refusal("[1]").contains("not a JSON object"))
        assertTrue(refusal("{").contains("not valid JSON"))
    }

    companion object {
        private val CASES = HashMap<String, List<*>>()
    }
}
