package dev.loragen.demo.engine

import ai.onnxruntime.OnnxJavaType
import ai.onnxruntime.OnnxTensor
import ai.onnxruntime.OnnxTensorLike
import ai.onnxruntime.OrtEnvironment
import ai.onnxruntime.OrtSession
import dev.loragen.core.DType
import dev.loragen.core.Json
import dev.loragen.core.JsonObject
import dev.loragen.core.JsonValues
import dev.loragen.core.StreamingDecoder
import dev.loragen.core.Tokenizer
import java.io.File
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.nio.FloatBuffer
import java.nio.LongBuffer

/**
 * ONNX Runtime: `model.onnx` (+ `model.onnx.data`, `swap.onnx.data` external data). A bundle is
 * swapped in by creating a new session whose `SessionOptions.addExternalInitializers` override the
 * swap initializers by name (the slot `key`); the graph and the data files are untouched. On an
 * artifact with run-time adapter slots a lora bundle keeps the loaded session: its slot values
 * ([Weights.Adapter]) are fed as the slot inputs with every run, and the base model is the session
 * fed none of them.
 * Greedy decoding with the exported past-KV inputs (`input_ids`, `attention_mask`, `position_ids`,
 * `past_key_values.{i}.key/value` -> `logits`, `present.{i}.key/value`).
 */
class OnnxEngine(private val dir: File, private val tokenizer: Tokenizer) : ChatEngine {
    override val backend = "onnx"
    private val env = OrtEnvironment.getEnvironment()
    private var session: OrtSession? = null
    private var overrides: List<OnnxTensor> = emptyList()
    private var slotInputs: Map<String, OnnxTensor> = emptyMap()
    @Volatile private var stopRequested = false

    private val config = Json.parse(File(dir, "config.json").readText()) as JsonObject
    private fun cfgInt(vararg keys: String): Int? = keys.firstNotNullOfOrNull { JsonValues.num(config[it])?.toInt() }
    private val layers = cfgInt("num_hidden_layers", "n_layer")!!
    private val heads = cfgInt("num_attention_heads", "n_head")!!
    private val kvHeads = cfgInt("num_key_value_heads") ?: heads
    private val headDim = cfgInt("head_dim") ?: (cfgInt("hidden_size", "n_embd")!! / heads)
    private val artifact = Json.parse(File(dir, "artifact.json").readText()) as JsonObject
    private val kvType = if (artifact.str("precision") == "fp16") OnnxJavaType.FLOAT16 else OnnxJavaType.FLOAT

    override fun load(weights: Weights) {
        slotInputs.values.forEach { it.close() }
        slotInputs = emptyMap()
        val plain = session != null && overrides.isEmpty() // the artifact's own weights are loaded
        if (plain && (weights is Weights.Base || weights is Weights.Adapter)) {
            if (weights is Weights.Adapter) slotInputs = slotTensors(weights)
            return
        }
        session?.close()
        overrides.forEach { it.close() }
        overrides = emptyList()
        val opts = OrtSession.SessionOptions()
        if (weights is Weights.Bundle) {
            val map = LinkedHashMap<String, OnnxTensorLike>()
            val made = ArrayList<OnnxTensor>()
            for (t in weights.plan) {
                // ORT wants direct buffers; merged bundles are memory maps (direct), lora merges are copied
                val src = t.data
                val buf = if (src.isDirect) src else ByteBuffer.allocateDirect(src.remaining()).order(ByteOrder.LITTLE_ENDIAN).put(src).also { it.flip() }
                val type = when (t.dtype) { DType.F16 -> OnnxJavaType.FLOAT16; DType.BF16 -> OnnxJavaType.BFLOAT16; else -> OnnxJavaType.FLOAT }
                val tensor = OnnxTensor.createTensor(env, buf, t.shape.toLongArray(), type)
                made.add(tensor)
                map[t.key ?: error("slot of ${t.param} has no initializer name")] = tensor
            }
            opts.addExternalInitializers(map)
            overrides = made // must outlive the session
        }
        session = env.createSession(File(dir, "model.onnx").absolutePath, opts)
        if (weights is Weights.Adapter) slotInputs = slotTensors(weights)
    }

    private fun slotTensors(weights: Weights.Adapter): Map<String, OnnxTensor> =
        weights.values.associate { v ->
            (v.name ?: error("adapter slot without an input name")) to OnnxTensor.createTensor(env, FloatBuffer.wrap(v.data), v.shape)
        }

    override fun generate(prompt: String, maxNewTokens: Int, onToken: (String) -> Unit): GenerationStats {
        val s = session ?: error("no model loaded")
        stopRequested = false
        var ids = tokenizer.encode(prompt) // with the post-processor's BOS, as the Python tokenizer
        val text = StreamingDecoder(tokenizer)
        val promptTokens = ids.size
        var past = 0
        var kv: Map<String, OnnxTensor> = (0 until layers).flatMap { i ->
            listOf("past_key_values.$i.key", "past_key_values.$i.value").map { it to emptyKv() }
        }.toMap()
        val generated = ArrayList<Int>()
        var first = 0L
        var t0 = System.nanoTime()
        try {
            for (step in 0 until maxNewTokens) {
                if (stopRequested) break
                val n = ids.size
                val inputs = HashMap<String, OnnxTensor>(kv)
                inputs.putAll(slotInputs) // owned by the engine, kept across runs
                inputs["input_ids"] = longTensor(ids.map { it.toLong() }.toLongArray(), longArrayOf(1, n.toLong()))
                inputs["attention_mask"] = longTensor(LongArray(past + n) { 1 }, longArrayOf(1, (past + n).toLong()))
                inputs["position_ids"] = longTensor(LongArray(n) { (past + it).toLong() }, longArrayOf(1, n.toLong()))
                val out = s.run(inputs)
                inputs.filterKeys { it !in kv && it !in slotInputs }.values.forEach { it.close() }
                val logits = out.get("logits").get() as OnnxTensor
                val next = argmaxLast(logits, n)
                val newKv = (0 until layers).flatMap { i ->
                    listOf("key", "value").map { w -> "past_key_values.$i.$w" to (out.get("present.$i.$w").get() as OnnxTensor) }
                }.toMap()
                kv.values.forEach { it.close() }
                kv = newKv
                // `out` also owns logits; the present tensors stay alive as the next step's past
                logits.close()
                past += n
                if (step == 0) { first = System.nanoTime(); t0 = first }
                if (next == tokenizer.eosId) break
                generated.add(next)
                text.append(next).let { if (it.isNotEmpty()) onToken(it) }
                ids = intArrayOf(next)
            }
        } finally {
            kv.values.forEach { it.close() }
        }
        text.finish().let { if (it.isNotEmpty()) onToken(it) }
        val secs = (System.nanoTime() - t0) / 1e9
        return GenerationStats(maxOf(0, generated.size - 1), promptTokens, secs)
    }

    private fun emptyKv(): OnnxTensor {
        val shape = longArrayOf(1, kvHeads.toLong(), 0, headDim.toLong())
        return OnnxTensor.createTensor(env, ByteBuffer.allocateDirect(0).order(ByteOrder.nativeOrder()), shape, kvType)
    }

    private fun longTensor(v: LongArray, shape: LongArray) = OnnxTensor.createTensor(env, LongBuffer.wrap(v), shape)

    private fun argmaxLast(logits: OnnxTensor, n: Int): Int {
        val shape = logits.info.shape // [1, 1, vocab] (last position; [1, n, vocab] for an all-logits export)
        val vocab = shape[2].toInt()
        val fb = logits.floatBuffer // fp16 logits are converted by ORT's accessor
        var best = 0
        var bestV = Float.NEGATIVE_INFINITY
        val base = (shape[1].toInt() - 1) * vocab
        for (j in 0 until vocab) { val x = fb.get(base + j); if (x > bestV) { bestV = x; best = j } }
        return best
    }

    override fun stop() { stopRequested = true }
    override fun close() { session?.close(); overrides.forEach { it.close() }; slotInputs.values.forEach { it.close() }; session = null }
}
