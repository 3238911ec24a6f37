package dev.loragen.demo

import android.app.Application
import androidx.compose.runtime.mutableStateListOf
import androidx.compose.runtime.mutableStateOf
import androidx.lifecycle.AndroidViewModel
import androidx.lifecycle.viewModelScope
import dev.loragen.core.BundleException
import dev.loragen.core.Tokenizer
import dev.loragen.demo.engine.ChatEngine
import dev.loragen.demo.engine.ExecuTorchEngine
import dev.loragen.demo.engine.OnnxEngine
import dev.loragen.demo.engine.Weights
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.launch
import kotlinx.coroutines.withContext
import java.io.File

data class ChatLine(val fromUser: Boolean, val text: String)

/**
 * Storage layout (adb-pushable without root, under /sdcard/Android/data/dev.loragen.demo/files/):
 *   artifacts/<name>/   an exported artifact directory (loragen export): artifact.json, config.json,
 *                       tokenizer.json, and model.pte + foundation.ptd + swap.ptd (ExecuTorch) or
 *                       model.onnx + model.onnx.data + swap.onnx.data (ONNX)
 *   keys/server.pub     the service's Ed25519 public key (PEM)
 * Bundles are cached in the app's internal files dir.
 */
class DemoViewModel(app: Application) : AndroidViewModel(app) {
    private val ext = app.getExternalFilesDir(null) ?: app.filesDir
    private val manager = BundleManager(File(app.filesDir, "bundles"), File(ext, "keys/server.pub"))

    val serviceUrl = mutableStateOf(BuildConfig.DEFAULT_SERVICE_URL)
    val apiKey = mutableStateOf("")
    val task = mutableStateOf("")
    val kind = mutableStateOf("merged")
    val status = mutableStateOf("")
    val progress = mutableStateOf<Float?>(null)
    val busy = mutableStateOf(false)
    val artifacts = mutableStateListOf<LocalArtifact>()
    val selected = mutableStateOf<LocalArtifact?>(null)
    val cached = mutableStateListOf<CachedBundle>()
    val active = mutableStateOf("base")
    val chat = mutableStateListOf<ChatLine>()
    val tokensPerSecond = mutableStateOf<Double?>(null)
    val savedTokens = mutableStateOf<Int?>(null)

    private var engine: ChatEngine? = null
    private var tokenizer: Tokenizer? = null

    init { refreshArtifacts() }

    fun refreshArtifacts() {
        artifacts.clear()
        File(ext, "artifacts").listFiles().orEmpty().filter { File(it, "artifact.json").isFile }.sortedBy { it.name }.forEach { d ->
            runCatching { LocalArtifact(d) }.onSuccess { if (it.backend == "executorch" || it.backend == "onnx") artifacts.add(it) }
        }
        if (artifacts.isEmpty()) status.value = "No artifacts: push an exported artifact to ${File(ext, "artifacts")}/<name>/"
    }

    private fun launchIo(what: String, block: suspend () -> Unit) {
        if (busy.value) return
        busy.value = true
        viewModelScope.launch {
            try {
                withContext(Dispatchers.IO) { block() }
            } catch (e: BundleException) {
                status.value = "$what refused [${e.code}]: ${e.message}" // nothing was swapped
            } catch (e: Exception) {
                status.value = "$what failed: ${e.message ?: e.javaClass.simpleName}"
            } finally {
                busy.value = false
                progress.value = null
            }
        }
    }

    /** Loads the base artifact (the backend is the artifact's). */
    fun selectArtifact(a: LocalArtifact) = launchIo("Loading ${a.name}") {
        engine?.close()
        val tok = Tokenizer.load(File(a.dir, "tokenizer.json")) // TokenizerException names what it cannot reproduce
        val e = if (a.backend == "executorch") ExecuTorchEngine(a.dir) else OnnxEngine(a.dir, tok)
        e.load(Weights.Base)
        engine = e
        tokenizer = tok
        withContext(Dispatchers.Main) {
            selected.value = a
            active.value = "base"
            cached.clear(); cached.addAll(manager.cached(a.fingerprint))
            status.value = "Loaded ${a.name} (${a.backend}), base weights"
        }
    }

    fun useBase() = launchIo("Switching to base") {
        engine?.load(Weights.Base) ?: error("load an artifact first")
        withContext(Dispatchers.Main) { active.value = "base"; savedTokens.value = null; status.value = "Base model" }
    }

    fun useCached(b: CachedBundle) = launchIo("Swapping in ${b.id.take(8)}") {
        val a = selected.value ?: error("load an artifact first")
        swapIn(a, b.id, b.file, b.task)
    }

    /** Asks the service for a bundle, downloads it (resumable), verifies it, swaps it in. */
    fun specialize() = launchIo("Specialization") {
        val a = selected.value ?: error("load an artifact first")
        val description = task.value.trim()
        require(description.isNotEmpty()) { "type a task description" }
        val client = ServiceClient(serviceUrl.value, apiKey.value)
        status.value = "Requesting a ${kind.value} bundle..."
        val info = client.specialize(description, a.fingerprint, kind.value)
        status.value = "Downloading ${info.size} bytes..."
        val file = client.download(info, manager.fileFor(info.id), { done, total ->
            progress.value = if (total > 0) done.toFloat() / total else null
        })
        manager.remember(info.id, description, kind.value, a.fingerprint)
        swapIn(a, info.id, file, description)
        withContext(Dispatchers.Main) { cached.clear(); cached.addAll(manager.cached(a.fingerprint)) }
    }

    private suspend fun swapIn(a: LocalArtifact, id: String, file: File, description: String) {
        status.value = "Verifying..."
        val weights = manager.prepare(id, file, a) // throws BundleException on any defect
        val what = when (weights) {
            is Weights.Bundle -> "${weights.plan.size} tensors swapped"
            is Weights.Adapter -> "${weights.values.size / 2} adapter slots filled"
            is Weights.Base -> "base weights"
        }
        status.value = "Swapping in the bundle ($what)..."
        engine!!.load(weights)
        val saved = tokenizer?.let {
            it.encode(prompt(a, "", description), addSpecialTokens = false).size - it.encode(prompt(a, ""), addSpecialTokens = false).size
        }
        withContext(Dispatchers.Main) {
            active.value = id
            savedTokens.value = saved
            status.value = "Using bundle ${id.take(8)} ($what)"
        }
    }

    /** The text for [message] (and an optional system message: the task description a
     *  non-specialized model would need in context), as the artifact's chat template renders it. */
    private fun prompt(a: LocalArtifact, message: String, system: String? = null): String {
        // The artifact's prompt contract: its chat template rendered by `loragen export` into
        // artifact.json "prompt_format" (the engine's tokenizer adds the BOS id).
        val fmt = a.manifest.json.obj("prompt_format") ?: error("artifact.json has no prompt_format; re-export it with loragen export")
        val template = fmt.str(if (system != null) "with_system" else "without_system") ?: error("artifact.json prompt_format is incomplete")
        return Regex("\\{(system|input)\\}").replace(template) { if (it.groupValues[1] == "system") system!! else message }
    }

    fun send(message: String) {
        val e = engine ?: run { status.value = "load an artifact first"; return }
        if (message.isBlank()) return
        chat.add(ChatLine(true, message))
        chat.add(ChatLine(false, ""))
        val idx = chat.lastIndex
        launchIo("Generation") {
            val stats = e.generate(prompt(selected.value ?: error("load an artifact first"), message), 128) { piece ->
                viewModelScope.launch(Dispatchers.Main) { chat[idx] = chat[idx].copy(text = chat[idx].text + piece) }
            }
            withContext(Dispatchers.Main) { tokensPerSecond.value = stats.tokensPerSecond }
        }
    }

    fun stop() = engine?.stop()

    override fun onCleared() { engine?.close() }
}
