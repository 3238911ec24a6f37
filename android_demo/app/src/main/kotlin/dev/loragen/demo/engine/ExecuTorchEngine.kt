package dev.loragen.demo.engine

import org.pytorch.executorch.extension.llm.LlmCallback
import org.pytorch.executorch.extension.llm.LlmModule
import java.io.File

/**
 * ExecuTorch: `model.pte` + `foundation.ptd` + a swap `.ptd`. The base model uses the artifact's own
 * `swap.ptd`; a bundle uses the `.ptd` the core wrote from its swap plan (same data keys, new bytes).
 * The program is never re-exported: a swap is a new LlmModule over different data files.
 *
 * API assumption (not compiled here): executorch-android's
 * `LlmModule(modelType, modulePath, tokenizerPath, temperature, dataFiles: List<String>)`.
 */
class ExecuTorchEngine(private val dir: File) : ChatEngine {
    override val backend = "executorch"
    private var module: LlmModule? = null

    override fun load(weights: Weights) {
        module?.close()
        module = null
        val swap = when (weights) {
            is Weights.Base -> File(dir, "swap.ptd")
            is Weights.Bundle -> weights.ptd ?: error("ExecuTorch swap needs the bundle's .ptd")
        }
        val dataFiles = listOf(File(dir, "foundation.ptd").absolutePath, swap.absolutePath)
        module = LlmModule(
            LlmModule.MODEL_TYPE_TEXT,
            File(dir, "model.pte").absolutePath,
            File(dir, "tokenizer.json").absolutePath,
            0.0f, // greedy
            dataFiles,
        ).also { it.load() }
    }

    override fun generate(prompt: String, maxNewTokens: Int, onToken: (String) -> Unit): GenerationStats {
        val m = module ?: error("no model loaded")
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
        m.generate(prompt, maxNewTokens, cb, false)
        val end = System.nanoTime()
        // decode rate: tokens after the first over the time since the first (prefill excluded)
        val secs = if (n > 1) (end - first) / 1e9 else (end - t0) / 1e9
        return GenerationStats(if (n > 1) n - 1 else n, -1, secs)
    }

    override fun stop() { module?.stop() }
    override fun close() { module?.close(); module = null }
}
