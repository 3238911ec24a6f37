package dev.loragen.demo

import dev.loragen.core.AdapterSlots
import dev.loragen.core.Artifact
import dev.loragen.core.BaseValues
import dev.loragen.core.BundleException
import dev.loragen.core.BundleVerifier
import dev.loragen.core.ByteSource
import dev.loragen.core.Ed25519
import dev.loragen.core.Json
import dev.loragen.core.JsonObject
import dev.loragen.core.JsonValues
import dev.loragen.core.PtdFile
import dev.loragen.core.PtdWriter
import dev.loragen.core.SwapPlan
import dev.loragen.demo.engine.Weights
import java.io.File
import java.security.NoSuchAlgorithmException
import java.security.Provider
import java.security.PublicKey
import java.security.Signature

/** A base artifact directory in app storage (artifact.json + the backend's files + tokenizer). */
class LocalArtifact(val dir: File) {
    val manifest: Artifact = Artifact.read(File(dir, "artifact.json"))
    val name: String get() = dir.name
    val backend: String get() = manifest.backend as? String ?: "?"
    val fingerprint: String get() = manifest.fingerprint as? String ?: ""
}

data class CachedBundle(val id: String, val task: String, val kind: String, val fingerprint: String, val file: File)

/**
 * Bundles on the device: cache, verification with the core (every check of
 * docs/bundle-format.md, signature required), and the swap: the core's swap plan, plus for
 * ExecuTorch the `.ptd` written from it. Nothing is swapped unless verification passed.
 */
class BundleManager(private val bundlesDir: File, private val keyFile: File) {
    init { bundlesDir.mkdirs() }

    /** Ed25519 from the platform if it has it (Android 13+ via Conscrypt), else BouncyCastle. */
    val provider: Provider? by lazy {
        try {
            Signature.getInstance("Ed25519"); null
        } catch (e: NoSuchAlgorithmException) {
            org.bouncycastle.jce.provider.BouncyCastleProvider()
        }
    }

    val publicKey: PublicKey?
        get() = if (keyFile.isFile) Ed25519.publicKeyFromPem(keyFile.readText(), provider) else null

    fun fileFor(id: String) = File(bundlesDir, "$id.bundle")

    fun cached(fingerprint: String): List<CachedBundle> = bundlesDir.listFiles { f -> f.name.endsWith(".json") }.orEmpty()
        .mapNotNull { f ->
            val o = runCatching { Json.parse(f.readText()) as JsonObject }.getOrNull() ?: return@mapNotNull null
            val id = f.name.removeSuffix(".json")
            CachedBundle(id, o.str("task") ?: "", o.str("kind") ?: "", o.str("fingerprint") ?: "", fileFor(id))
        }
        .filter { it.fingerprint == fingerprint && it.file.isFile }
        .sortedBy { it.task }

    fun remember(id: String, task: String, kind: String, fingerprint: String) {
        File(bundlesDir, "$id.json").writeText(
            "{\"task\":${JsonValues.quote(task)},\"kind\":${JsonValues.quote(kind)},\"fingerprint\":${JsonValues.quote(fingerprint)}}",
        )
    }

    /**
     * Verifies [bundle] against [art] and prepares its weights. Throws [BundleException] (with the
     * shared error `code`) on any defect; the caller shows the one-line message and keeps the
     * current weights.
     */
    fun prepare(id: String, bundle: File, art: LocalArtifact): Weights {
        val key = publicKey ?: throw BundleException(dev.loragen.core.ErrorCode.KEY_REQUIRED,
            "no public key at ${keyFile.path}: push the service's server.pub there")
        val src = ByteSource.open(bundle) // kept open: merged tensors are memory maps into it
        val vb = BundleVerifier.verify(src, art.manifest, key, requireSignature = true, provider = provider)
        return when (art.backend) {
            "executorch" -> {
                val data = ByteSource.open(File(art.dir, "model.ptd")) // the artifact's one data file
                val base = if (vb.kind == "lora") BaseValues.fromPtd(PtdFile.read(data)) else null
                val plan = SwapPlan.build(vb, base)
                val ptd = File(bundlesDir, "$id.ptd")
                val tmp = File(bundlesDir, "$id.ptd.tmp")
                tmp.outputStream().buffered(1 shl 20).use { PtdWriter.writeSwapped(data, plan, it) } // model.ptd, slots swapped
                if (!tmp.renameTo(ptd)) error("cannot write ${ptd.path}")
                Weights.Bundle(id, plan, ptd)
            }
            "onnx" -> if (vb.kind == "lora" && AdapterSlots.present(art.manifest)) {
                // the artifact's run-time adapter slots: the factors only, fed to the loaded session
                Weights.Adapter(id, AdapterSlots.values(vb))
            } else {
                val base = if (vb.kind == "lora") BaseValues.fromOnnxSwapData(ByteSource.open(File(art.dir, "swap.onnx.data"))) else null
                Weights.Bundle(id, SwapPlan.build(vb, base), null)
            }
            else -> error("backend ${art.backend} is not supported on Android (Core ML is iOS)")
        }
    }
}
