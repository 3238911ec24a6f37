package dev.loragen.core

import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Test

/** Run-time adapter slot values: Python's `adapter_slot_inputs` bit for bit (tests/golden/expected/slots-*). */
class AdapterSlotsTest {
    private fun verified(name: String): VerifiedBundle =
        BundleVerifier.verify(ByteSource.of(Golden.bundle(name)), Golden.artifactFor(name), Golden.publicKey)

    @Test
    fun loraBundleGivesPythonsSlotValuesExactly() {
        assertEquals("expected/slots-onnx-lora.safetensors", Golden.bundles.obj("onnx-lora")!!.str("adapter_slot_values"))
        val want = Golden.safetensors("expected/slots-onnx-lora.safetensors")
        val got = AdapterSlots.values(verified("onnx-lora"))
        val names = (Golden.artifact("onnx").json.obj("adapter_slots")!!["input_names"] as List<*>).map { it as String }
        assertEquals(names, got.map { it.name })
        assertEquals(names.sorted(), want.tensors.keys.sorted())
        var nonzero = 0
        for (v in got) {
            val t = want.tensors.getValue(v.name!!)
            assertEquals(v.name, t.shape, v.shape.toList())
            val expected = LoraMerge.toFloats(want.tensorBuffer(v.name), t.dtype)
            // bit patterns, so -0.0 and 0.0 or NaN payloads would differ too
            assertArrayEquals(v.name, expected.map { it.toRawBits() }.toIntArray(), v.data.map { it.toRawBits() }.toIntArray())
            nonzero += v.data.count { it != 0f }
        }
        // rank 4 in slots of rank 6: a third of each factor is padding
        val total = got.sumOf { it.data.size }
        assertEquals(total * 2 / 3, nonzero)
    }

    @Test
    fun zerosAreTheBaseModel() {
        val art = Golden.artifact("onnx")
        val z = AdapterSlots.zeros(art)
        val v = AdapterSlots.values(verified("onnx-lora"))
        assertEquals(v.map { it.name to it.shape.toList() }, z.map { it.name to it.shape.toList() })
        assertEquals(0, z.sumOf { s -> s.data.count { it != 0f } })
    }

    @Test
    fun refusals() {
        expectCode("usage") { AdapterSlots.values(verified("onnx-merged")) }
        expectCode("artifact") { AdapterSlots.values(verified("executorch-lora")) } // exported without slots
        // slots of a lower rank than the bundle's: code input, nothing returned
        val json = Golden.artifact("onnx").json
        val slots = LinkedHashMap(json.obj("adapter_slots")!!.map).also { it["rank"] = 2L }
        val low = Artifact(JsonObject(LinkedHashMap(json.map).also { it["adapter_slots"] = JsonObject(slots) }))
        val vb = BundleVerifier.verify(ByteSource.of(Golden.bundle("onnx-lora")), low, Golden.publicKey)
        expectCode("input") { AdapterSlots.values(vb) }
    }
}
