package dev.loragen.core

import java.security.KeyFactory
import java.security.PrivateKey
import java.security.Provider
import java.security.PublicKey
import java.security.Signature
import java.security.spec.PKCS8EncodedKeySpec
import java.security.spec.X509EncodedKeySpec
import java.util.Base64

/**
 * Ed25519 (RFC 8032) through the JCA: the JDK's own provider on JDK 15+; on Android pass a
 * provider that has "Ed25519" (e.g. BouncyCastle) where the platform has none.
 */
object Ed25519 {
    /** DER prefix of an Ed25519 SubjectPublicKeyInfo; the 32 raw key bytes follow. */
    val SPKI_PREFIX: ByteArray = Hex.decode("302a300506032b6570032100")

    /** A `-----BEGIN PUBLIC KEY-----` PEM (SubjectPublicKeyInfo) holding an Ed25519 key. */
    fun publicKeyFromPem(pem: String, provider: Provider? = null): PublicKey {
        val der = pemBody(pem, "PUBLIC KEY")
        if (der.size != 44 || !der.copyOfRange(0, 12).contentEquals(SPKI_PREFIX)) {
            fail(ErrorCode.ARTIFACT, "public key is not an Ed25519 SubjectPublicKeyInfo (expected 44 DER bytes with prefix 302a300506032b6570032100)")
        }
        return publicKeyFromRaw(der.copyOfRange(12, 44), provider)
    }

    fun publicKeyFromRaw(raw: ByteArray, provider: Provider? = null): PublicKey {
        require(raw.size == 32) { "an Ed25519 public key has 32 bytes" }
        val kf = if (provider != null) KeyFactory.getInstance("Ed25519", provider) else KeyFactory.getInstance("Ed25519")
        return kf.generatePublic(X509EncodedKeySpec(SPKI_PREFIX + raw))
    }

    /** PKCS#8 `-----BEGIN PRIVATE KEY-----` (used by tests to sign mutated vectors). */
    fun privateKeyFromPem(pem: String, provider: Provider? = null): PrivateKey {
        val kf = if (provider != null) KeyFactory.getInstance("Ed25519", provider) else KeyFactory.getInstance("Ed25519")
        return kf.generatePrivate(PKCS8EncodedKeySpec(pemBody(pem, "PRIVATE KEY")))
    }

    /** 16 hex characters of sha256(raw public key): the manifest's `key_id`. */
    fun keyId(pub: PublicKey): String {
        val der = pub.encoded
        val raw = der.copyOfRange(der.size - 32, der.size)
        return Hex.encode(java.security.MessageDigest.getInstance("SHA-256").digest(raw)).take(16)
    }

    fun verify(pub: PublicKey, signature: ByteArray, message: ByteArray, provider: Provider? = null): Boolean = try {
        val s = if (provider != null) Signature.getInstance("Ed25519", provider) else Signature.getInstance("Ed25519")
        s.initVerify(pub)
        s.update(message)
        s.verify(signature)
    } catch (e: java.security.SignatureException) {
        false
    } catch (e: java.security.InvalidKeyException) {
        false
    }

    fun sign(key: PrivateKey, message: ByteArray, provider: Provider? = null): ByteArray {
        val s = if (provider != null) Signature.getInstance("Ed25519", provider) else Signature.getInstance("Ed25519")
        s.initSign(key)
        s.update(message)
        return s.sign()
    }

    private fun pemBody(pem: String, label: String): ByteArray {
        val begin = "-----BEGIN $label-----"
        val end = "-----END $label-----"
        val a = pem.indexOf(begin)
        val b = pem.indexOf(end)
        if (a < 0 || b < a) fail(ErrorCode.ARTIFACT, "not a PEM '$label'")
        return try {
            Base64.getMimeDecoder().decode(pem.substring(a + begin.length, b).trim())
        } catch (e: IllegalArgumentException) {
            fail(ErrorCode.ARTIFACT, "PEM '$label' is not valid base64")
        }
    }
}
