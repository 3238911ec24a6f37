package dev.loragen.demo.engine

import dev.loragen.core.SlotValue
import dev.loragen.core.SwapTensor
import java.io.File

/** What was swapped in: the base model, a verified bundle's replacement tensors, or its LoRA
 *  factors for an artifact with run-time adapter slots. */
sealed class Weights {
    object Base : Weights()
    /** [plan]: the core's swap plan; [ptd]: for ExecuTorch, the `.ptd` written from it. */
    class Bundle(val id: String, val plan: List<SwapTensor>, val ptd: File?) : Weights()
    /** A lora bundle's slot values ([dev.loragen.core.AdapterSlots]): the loaded model is kept. */
    class Adapter(val id: String, val values: List<SlotValue>) : Weights()
}

data class GenerationStats(val generatedTokens: Int, val promptTokens: Int, val seconds: Double) {
    val tokensPerSecond: Double get() = if (seconds > 0) generatedTokens / seconds else 0.0
}

/** One backend runtime holding one artifact; [load] swaps the weights without re-exporting. */
interface ChatEngine : AutoCloseable {
    val backend: String
    fun load(weights: Weights)
    /** Streams tokens through [onToken]; blocking. */
    fun generate(prompt: String, maxNewTokens: Int, onToken: (String) -> Unit): GenerationStats
    fun stop()
}
