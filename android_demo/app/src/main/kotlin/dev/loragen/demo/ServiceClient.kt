package dev.loragen.demo

import dev.loragen.core.Json
import dev.loragen.core.JsonObject
import dev.loragen.core.JsonValues
import java.io.File
import java.io.IOException
import java.io.RandomAccessFile
import java.net.HttpURLConnection
import java.net.URL
import java.security.MessageDigest

/** A bundle the service made: `POST /v1/specializations` response. */
data class BundleInfo(val id: String, val size: Long, val sha256: String, val url: String, val manifest: JsonObject?)

data class RemoteArtifact(val name: String, val fingerprint: String, val backend: String)

class ServiceException(val status: Int, val code: String, message: String) : IOException(message)

/**
 * The loragen service API (JSON over HTTP, `X-API-Key` on every call). Blocking: call from a
 * background dispatcher. Uses the core's strict JSON parser, so no JSON library is needed.
 */
class ServiceClient(private val baseUrl: String, private val apiKey: String) {
    private fun url(path: String) = URL(baseUrl.trimEnd('/') + path)

    private fun open(path: String, method: String = "GET"): HttpURLConnection =
        (url(path).openConnection() as HttpURLConnection).apply {
            requestMethod = method
            connectTimeout = 15_000
            readTimeout = 120_000 // a specialization can take a while on first request
            setRequestProperty("X-API-Key", apiKey)
            setRequestProperty("Accept", "application/json")
        }

    private fun readJson(c: HttpURLConnection): JsonObject {
        val status = c.responseCode
        val body = (if (status >= 400) c.errorStream else c.inputStream)?.use { String(it.readBytes(), Charsets.UTF_8) } ?: ""
        val doc = try { Json.parse(body) as? JsonObject } catch (e: Exception) { null }
        if (status >= 400) {
            val err = doc?.obj("error")
            throw ServiceException(status, err?.str("code") ?: "http_$status", err?.str("message") ?: "HTTP $status")
        }
        return doc ?: throw ServiceException(status, "bad_response", "service returned non-JSON")
    }

    fun artifacts(): List<RemoteArtifact> {
        val doc = readJson(open("/v1/artifacts"))
        return (doc["artifacts"] as? List<*>).orEmpty().mapNotNull { a ->
            val o = a as? JsonObject ?: return@mapNotNull null
            RemoteArtifact(o.str("name") ?: return@mapNotNull null, o.str("fingerprint") ?: "", o.str("backend") ?: "")
        }
    }

    /** `POST /v1/specializations`: 201 (made now) or 200 (cached). */
    fun specialize(task: String, artifact: String, kind: String): BundleInfo {
        val c = open("/v1/specializations", "POST")
        c.doOutput = true
        c.setRequestProperty("Content-Type", "application/json; charset=utf-8")
        val body = "{\"task\":${JsonValues.quote(task)},\"artifact\":${JsonValues.quote(artifact)},\"kind\":${JsonValues.quote(kind)}}"
        c.outputStream.use { it.write(body.toByteArray(Charsets.UTF_8)) }
        val o = readJson(c)
        return BundleInfo(
            id = o.str("id") ?: throw ServiceException(c.responseCode, "bad_response", "no id"),
            size = (o["size"] as? Long) ?: -1,
            sha256 = o.str("sha256") ?: "",
            url = o.str("url") ?: "/v1/bundles/${o.str("id")}",
            manifest = o.obj("manifest"),
        )
    }

    /**
     * Downloads a bundle to [dest], resuming a partial `dest.part` with `Range: bytes=N-` guarded by
     * `If-Range: <ETag>` (a changed file restarts from 0). [progress] gets (bytes so far, total).
     * Checks the size and sha256 the service announced; the caller then verifies the bundle itself.
     */
    fun download(info: BundleInfo, dest: File, progress: (Long, Long) -> Unit, cancelled: () -> Boolean = { false }): File {
        if (dest.isFile && dest.length() == info.size) return dest
        val part = File(dest.path + ".part")
        val etagFile = File(dest.path + ".etag")
        var have = if (part.isFile) part.length() else 0L
        val c = open(info.url)
        c.setRequestProperty("Accept", "application/octet-stream")
        if (have > 0 && etagFile.isFile) {
            c.setRequestProperty("Range", "bytes=$have-")
            c.setRequestProperty("If-Range", etagFile.readText())
        }
        val status = c.responseCode
        if (status >= 400) readJson(c) // throws ServiceException with the service's error code
        if (status == 200) have = 0 // the server sent the whole file (no range, or the ETag changed)
        else if (status != 206) throw ServiceException(status, "bad_response", "unexpected HTTP $status")
        c.getHeaderField("ETag")?.let { etagFile.writeText(it) }
        val total = if (info.size > 0) info.size else have + c.contentLengthLong
        RandomAccessFile(part, "rw").use { raf ->
            raf.setLength(have)
            raf.seek(have)
            c.inputStream.use { input ->
                val buf = ByteArray(64 * 1024)
                var done = have
                progress(done, total)
                while (true) {
                    if (cancelled()) throw IOException("download cancelled (resumable)")
                    val n = input.read(buf)
                    if (n < 0) break
                    raf.write(buf, 0, n)
                    done += n
                    progress(done, total)
                }
            }
        }
        if (info.size > 0 && part.length() != info.size) {
            throw IOException("download incomplete: ${part.length()} of ${info.size} bytes (resumable)")
        }
        if (info.sha256.isNotEmpty() && sha256(part) != info.sha256) {
            part.delete(); etagFile.delete()
            throw IOException("downloaded bytes do not match the announced sha256; discarded")
        }
        if (!part.renameTo(dest)) throw IOException("cannot move ${part.name} into place")
        etagFile.delete()
        return dest
    }

    private fun sha256(f: File): String {
        val md = MessageDigest.getInstance("SHA-256")
        f.inputStream().use { s ->
            val b = ByteArray(1 shl 20)
            while (true) { val n = s.read(b); if (n < 0) break; md.update(b, 0, n) }
        }
        return md.digest().joinToString("") { "%02x".format(it) }
    }
}
