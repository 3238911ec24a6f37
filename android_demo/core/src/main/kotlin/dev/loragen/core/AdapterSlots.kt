package dev.loragen.core

/** One run-time adapter slot value: [name] (the ONNX input; null for ExecuTorch), fp32 [data] of [shape]. */
class SlotValue(val name: String?, val shape: LongArray, val data: FloatArray)

/**
 * Run-time adapter slots (`artifact.json` `adapter_slots`, an export with `--adapter-slots R`): the
 * values that take a lora bundle into a loaded model without touching its weights, Python's
 * `exporters.pipeline.adapter_slot_inputs` bit for bit. For each slot module, in the block's
 * `modules` order: A `[R, in]` and `scale * B` `[out, R]` (fp32 products of the fp32 factors and
 * the fp32 scale `alpha / r`), zero-padded to rank R; zeros for a module the bundle does not adapt.
 *
 * ONNX: feed each value as the input named by `input_names` with every run (a session that feeds
 * none runs the base model). ExecuTorch: the same values, in order, are the `set_adapter` method's
 * inputs (needs a `Module` sharing memory arenas between methods).
 */
object AdapterSlots {
    /** The slot values of the verified lora bundle [vb] for its artifact's slots. */
    fun values(vb: VerifiedBundle): List<SlotValue> {
        if (vb.kind != "lora") {
            fail(ErrorCode.USAGE, "a merged bundle holds merged weights, not LoRA factors: adapter slots take a lora bundle")
        }
        val slots = block(vb.artifact)
        val lora = vb.manifest.obj("lora") ?: fail(ErrorCode.MANIFEST, "lora bundle manifest has no 'lora' object")
        val r = (lora["r"] as? Long)?.toInt() ?: fail(ErrorCode.MANIFEST, "lora bundle manifest has no integer rank")
        val scale = (JsonValues.num(lora["alpha"]) ?: fail(ErrorCode.MANIFEST, "lora bundle manifest has no alpha")) / r
        val entries = vb.manifest.obj("tensors")!!
        val modules = entries.keys.filter { it.endsWith(".lora_A") }.map { it.dropLast(".lora_A".length) }
        val unknown = modules.filter { it !in slots.modules }.sortedWith(CodePointOrder)
        if (unknown.isNotEmpty()) fail(ErrorCode.INPUT, "the adapter adapts ${unknown[0]}, which has no adapter slot in this artifact")
        if (r > slots.rank) fail(ErrorCode.INPUT, "the adapter has rank $r; this artifact's slots hold rank ${slots.rank} at most")
        val out = ArrayList<SlotValue>()
        for ((i, m) in slots.modules.withIndex()) {
            val (outF, inF) = slots.shapes[i]
            val a = FloatArray(slots.rank * inF)
            val b = FloatArray(outF * slots.rank)
            if (m in modules) {
                val fa = factor(vb, "$m.lora_A")
                val fb = factor(vb, "$m.lora_B")
                if (fa.size != r * inF || fb.size != outF * r) {
                    fail(ErrorCode.INPUT, "LoRA factors of $m do not have the shapes A [$r, $inF], B [$outF, $r] of its slot")
                }
                fa.copyInto(a) // rows 0 until r of A [R, in]
                val s = scale.toFloat()
                for (row in 0 until outF) for (k in 0 until r) b[row * slots.rank + k] = fb[row * r + k] * s
            }
            out.add(SlotValue(slots.names?.get(2 * i), longArrayOf(slots.rank.toLong(), inF.toLong()), a))
            out.add(SlotValue(slots.names?.get(2 * i + 1), longArrayOf(outF.toLong(), slots.rank.toLong()), b))
        }
        return out
    }

    /** The slot values of the base model (every factor zero), to take an adapter out again. */
    fun zeros(artifact: Artifact): List<SlotValue> {
        val slots = block(artifact)
        return slots.modules.indices.flatMap { i ->
            val (outF, inF) = slots.shapes[i]
            listOf(
                SlotValue(slots.names?.get(2 * i), longArrayOf(slots.rank.toLong(), inF.toLong()), FloatArray(slots.rank * inF)),
                SlotValue(slots.names?.get(2 * i + 1), longArrayOf(outF.toLong(), slots.rank.toLong()), FloatArray(outF * slots.rank)),
            )
        }
    }

    /** Whether [artifact] was exported with run-time adapter slots. */
    fun present(artifact: Artifact): Boolean = artifact.json["adapter_slots"] is JsonObject

    private class Block(val rank: Int, val modules: List<String>, val shapes: List<Pair<Int, Int>>, val names: List<String>?)

    private fun block(artifact: Artifact): Block {
        val o = artifact.json.obj("adapter_slots")
            ?: fail(ErrorCode.ARTIFACT, "artifact has no adapter slots; export it with --adapter-slots R")
        val rank = (o["rank"] as? Long)?.toInt()?.takeIf { it > 0 } ?: fail(ErrorCode.ARTIFACT, "artifact adapter_slots has no positive rank")
        val modules = (o["modules"] as? List<*>)?.map { it as? String ?: fail(ErrorCode.ARTIFACT, "artifact adapter_slots module is not a name") }
            ?: fail(ErrorCode.ARTIFACT, "artifact adapter_slots has no modules")
        val shapes = (o["shapes"] as? List<*>)?.map { s ->
            val d = (s as? List<*>)?.map { (it as? Long)?.toInt() ?: -1 } ?: emptyList()
            if (d.size != 2 || d.any { it <= 0 }) fail(ErrorCode.ARTIFACT, "artifact adapter_slots shape is not [out, in]")
            d[0] to d[1]
        } ?: fail(ErrorCode.ARTIFACT, "artifact adapter_slots has no shapes")
        val names = (o["input_names"] as? List<*>)?.map { it as? String ?: fail(ErrorCode.ARTIFACT, "artifact adapter_slots input name is not a string") }
        if (shapes.size != modules.size || (names != null && names.size != 2 * modules.size)) {
            fail(ErrorCode.ARTIFACT, "artifact adapter_slots lists ${modules.size} modules, ${shapes.size} shapes and ${names?.size} inputs")
        }
        return Block(rank, modules, shapes, names)
    }

    private fun factor(vb: VerifiedBundle, name: String): FloatArray {
        val t = vb.parsed.tensors[name] ?: fail(ErrorCode.MISSING_TENSOR, "lora bundle has no tensor $name")
        return LoraMerge.toFloats(vb.parsed.container.tensorBuffer(name), t.dtype)
    }
}
