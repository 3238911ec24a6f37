package dev.loragen.core

import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Assert.assertNull
import org.junit.Assert.assertTrue
import org.junit.Test
import java.io.File

/** Every vector of tests/golden/expected.json, as the Python reader sees it. */
class GoldenTest {
    private val names get() = Golden.bundles.keys.sorted()

    @Test
    fun allSeventeenVectorsArePresent() {
        assertEquals(
            listOf("coreml-lora", "coreml-merged", "duplicate-names", "executorch-lora", "executorch-merged", "non-utf8-header",
                "onnx-lora", "onnx-merged", "other-backend", "oversized-header-length", "short", "tampered-data",
                "tampered-header", "truncated", "truncated-data", "unsigned", "wrong-key"),
            names,
        )
    }

    @Test
    fun fileSha256AndSize() {
        for (n in names) {
            val e = Golden.bundles.obj(n)!!
            val raw = Golden.bundle(n)
            assertEquals(n, e["size"], raw.size.toLong())
            assertEquals(n, e["sha256"], sha256Hex(raw))
        }
    }

    @Test
    fun signingDigests() {
        var computed = 0
        for (n in names) {
            val want = Golden.bundles.obj(n)!!["signing_digest"]
            val got = try {
                Hex.encode(ParsedBundle.parse(ByteSource.of(Golden.bundle(n))).signingDigest())
            } catch (e: BundleException) {
                null
            }
            assertEquals(n, want, got)
            if (got != null) computed++
        }
        assertEquals(11, computed)
    }

    @Test
    fun verdictsAndCodesFromMemory() {
        for (n in names) checkVerdict(n) { ByteSource.of(Golden.bundle(n)) }
    }

    @Test
    fun verdictsAndCodesFromFiles() {
        // the file path: positional reads and memory maps, never a whole-file read
        for (n in names) checkVerdict(n) { ByteSource.open(File(Golden.dir, "bundles/$n.bundle")) }
    }

    private fun checkVerdict(n: String, src: () -> ByteSource) {
        val e = Golden.bundles.obj(n)!!
        val art = Golden.artifactFor(n)
        val code = src().use { s -> codeOf { BundleVerifier.verify(s, art, Golden.publicKey) } }
        if (e["verdict"] == "valid") {
            assertNull("$n should verify", code)
        } else {
            assertEquals("rejected", e["verdict"])
            assertEquals(n, e["code"], code)
        }
    }

    @Test
    fun keyRequiredWrongKeyAndUnsignedPolicy() {
        val art = Golden.artifact("executorch")
        val valid = Golden.bundle("executorch-merged")
        expectCode("key_required") { BundleVerifier.verify(ByteSource.of(valid), art, null) }
        expectCode("bad_signature") { BundleVerifier.verify(ByteSource.of(valid), art, Golden.otherKey) }
        // the bundle signed with the other key verifies with that key
        BundleVerifier.verify(ByteSource.of(Golden.bundle("wrong-key")), art, Golden.otherKey)
        // an unsigned bundle passes only when the caller does not require a signature
        BundleVerifier.verify(ByteSource.of(Golden.bundle("unsigned")), art, null, requireSignature = false)
        expectCode("key_required") { BundleVerifier.verify(ByteSource.of(Golden.bundle("unsigned")), art, null) }
        // a bundle that carries a signature is always verified: admitting unsigned bundles does not
        // let a signed one through without its key, nor one whose signature is bad
        expectCode("key_required") { BundleVerifier.verify(ByteSource.of(Golden.bundle("tampered-data")), art, null, requireSignature = false) }
        expectCode("bad_signature") { BundleVerifier.verify(ByteSource.of(Golden.bundle("tampered-data")), art, Golden.publicKey, requireSignature = false) }
        assertTrue(BundleVerifier.verify(ByteSource.of(valid), art, Golden.publicKey, requireSignature = false).signatureVerified)
        assertTrue(!BundleVerifier.verify(ByteSource.of(Golden.bundle("unsigned")), art, null, requireSignature = false).signatureVerified)
        // the golden artifact of another backend refuses the bundle
        expectCode("backend") { BundleVerifier.verify(ByteSource.of(valid), Golden.artifact("onnx"), Golden.publicKey) }
    }

    @Test
    fun keyIdMatchesManifest() {
        assertEquals("5cb5ae72633d406d", Ed25519.keyId(Golden.publicKey))
        for (n in listOf("executorch-merged", "onnx-lora", "coreml-merged")) {
            assertEquals(Ed25519.keyId(Golden.publicKey), BundleWriter.manifestOf(Golden.bundle(n)).str("key_id"))
        }
    }

    @Test
    fun swapPlansMatchExpected() {
        for (n in names) {
            val e = Golden.bundles.obj(n)!!
            if (e["verdict"] != "valid") continue
            val vb = BundleVerifier.verify(ByteSource.of(Golden.bundle(n)), Golden.artifactFor(n), Golden.publicKey)
            assertEquals(n, e["kind"], vb.kind)
            val base = BaseValues.fromSafetensors(Golden.safetensors(e.str("base")!!))
            val plan = SwapPlan.build(vb, base)
            val want = e.obj("swap_plan")!!
            assertEquals(n, want.keys.toList(), plan.map { it.param })
            val expectedTensors = Golden.safetensors(e.str("expected")!!)
            val exact = e["tolerance"] == 0.0 && (vb.kind == "merged")
            for (t in plan) {
                val w = want.obj(t.param)!!
                val loc = JsonObject(LinkedHashMap(w.map).apply { remove("sha256") })
                assertTrue("$n ${t.param} locator ${t.locator} vs $loc", JsonValues.pyEquals(loc, t.locator))
                val et = expectedTensors.tensors.getValue(t.param)
                assertEquals(et.dtype, t.dtype)
                assertEquals(et.shape, t.shape)
                if (exact || n == "coreml-lora") {
                    // merged bundles: the bytes themselves; coreml-lora: the fp16 on-device merge equals
                    // Python's host merge bit for bit on these vectors
                    assertEquals("$n ${t.param}", w["sha256"], t.sha256())
                    val a = ByteArray(t.nbytes); t.data.get(a)
                    val b = expectedTensors.tensorBuffer(t.param); val bb = ByteArray(b.remaining()); b.get(bb)
                    assertArrayEquals(bb, a)
                }
            }
            if (vb.kind == "lora" && n != "coreml-lora") {
                // fp32 lora: element by element within the documented fp32 rounding bound
                val worst = MergeTest.assertWithinBound(n, vb, plan, base, expectedTensors)
                assertTrue("$n worst error / bound = $worst", worst <= 1.0)
            }
        }
    }

    @Test
    fun onnxPlanAddressesInitializersAndOffsets() {
        val vb = BundleVerifier.verify(ByteSource.of(Golden.bundle("onnx-merged")), Golden.artifact("onnx"), Golden.publicKey)
        val plan = SwapPlan.build(vb)
        assertEquals(6, plan.size)
        val byParam = plan.associateBy { it.param }
        assertEquals("model.layers.0.mlp.up_proj.weight", byParam.getValue("model.layers.0.mlp.up_proj.weight").key)
        assertEquals("swap.onnx.data", byParam.getValue("model.layers.0.mlp.up_proj.weight").file)
        assertEquals(512L, byParam.getValue("model.layers.0.mlp.up_proj.weight").offset)
        assertEquals(0L, byParam.getValue("model.layers.0.mlp.gate_proj.weight").offset)
        for (t in plan) assertEquals(t.param, t.key)
        // a lora bundle cannot be swapped without the base values
        val lora = BundleVerifier.verify(ByteSource.of(Golden.bundle("onnx-lora")), Golden.artifact("onnx"), Golden.publicKey)
        expectCode("build") { SwapPlan.build(lora, null) }
    }

    @Test
    fun coremlPlanKeepsHeaderOffsets() {
        val vb = BundleVerifier.verify(ByteSource.of(Golden.bundle("coreml-merged")), Golden.artifact("coreml"), Golden.publicKey)
        val t = SwapPlan.build(vb).first { it.param == "model.layers.0.mlp.down_proj.weight" }
        assertEquals(768L, t.offset)
        assertEquals(704L, t.locator["header_offset"])
        assertEquals("p_model_layers_0_mlp_down_proj_weight", t.key)
        assertEquals(DType.F16, t.dtype)
        assertEquals(256, t.nbytes)
    }
}
