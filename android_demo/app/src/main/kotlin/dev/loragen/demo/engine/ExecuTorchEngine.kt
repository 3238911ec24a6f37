package dev.loragen.demo.engine

import dev.loragen.core.Tokenizer
import org.pytorch.executorch.extension.llm.LlmCallback
import org.pytorch.executorch.extension.llm.LlmModule
import java.io.File

/**
 * ExecuTorch through its stock LLM runner (`LlmModule`, which wraps the C++ `text_llm_runner`):
 * `model.pte` + one data file + `tokenizer.json`. The base model uses the artifact's `model.ptd`; a
 * bundle uses the copy of it the core wrote with the swap slots' bytes replaced
 * (`PtdWriter.writeSwapped`: same keys, same layout). The program is never re-exported: a swap is a
 * new `LlmModule` over another data file. The runner reads `get_max_seq_len`, `get_eos_ids`, ... from
 * the program (written by the exporter) and stops at any EOS id.
 *
 * executorch-android API used (android_demo/gradle/libs.versions.toml pins the version; each call is
 * cited in android_demo/README.md): `LlmModule(modelType, modulePath, tokenizerPath, temperature,
 * dataFiles, numBos, numEos)`, `load()`, `resetContext()`, `generate(prompt, seqLen, callback, echo)`,
 * `stop()`, `close()`, `LlmCallback.onResult/onStats`.
 */
class ExecuTorchEngine(private val dir: File) : ChatEngine {
    override val backend = "executorch"
    private var module: LlmModule? = null
    // counts the prompt's tokens: generate() takes the total sequence length (prompt included)
    private val tokenizer: Tokenizer by lazy { Tokenizer.load(File(dir, "tokenizer.json")) }

    override fun load(weights: Weights) {
        module?.close()
        module = null
        val data = when (weights) {
            is Weights.Base -> File(dir, "model.ptd")
            is Weights.Bundle -> weights.ptd ?: error("ExecuTorch swap needs the bundle's .ptd")
            // LlmModule runs `forward` only; set_adapter needs a Module that shares memory arenas
            is Weights.Adapter -> error("adapter slots on ExecuTorch need a Module with shared memory arenas, not LlmModule")
        }
        module = LlmModule(
            LlmModule.MODEL_TYPE_TEXT,
            File(dir, "model.pte").absolutePath,
            File(dir, "tokenizer.json").absolutePath,
            0.0f, // greedy
            listOf(data.absolutePath),
            1, // numBos: the prompt starts with BOS, as the Hugging Face tokenizer's post-processor adds
            0, // numEos
        ).also { it.load() }
    }

    override fun generate(prompt: String, maxNewTokens: Int, onToken: (String) -> Unit): GenerationStats {
        val m = module ?: error("no model loaded")
        val promptTokens = tokenizer.encode(prompt).size // with BOS
        // seqLen is the total length (prompt + new tokens); the runner also caps it at get_max_seq_len
        val seqLen = promptTokens + maxNewTokens
        var n = 0
        var first = 0L
        val cb = object : LlmCallback {
            override fun onResult(result: String) {
                if (n == 0) first = System.nanoTime()
                n++
                onToken(result)
            }
            override fun onStats(stats: String) {}
        }
        val t0 = System.nanoTime()
        m.resetContext() // one prompt per generation: empty KV cache, position 0, BOS again
        m.generate(prompt, seqLen, cb, false)
        val end = System.nanoTime()
        // decode rate: pieces after the first over the time since the first (prefill excluded)
        val secs = if (n > 1) (end - first) / 1e9 else (end - t0) / 1e9
        return GenerationStats(if (n > 1) n - 1 else n, promptTokens, secs)
    }

    override fun stop() { module?.stop() }
    override fun close() { module?.close(); module = null }
}
