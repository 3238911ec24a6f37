import CryptoKit
import Foundation

/// Ed25519 (RFC 8032) with CryptoKit: PEM keys as written by `loragen bundle keygen` and the
/// Python `cryptography` package.
public enum Ed25519 {
    /// DER prefix of an Ed25519 SubjectPublicKeyInfo; the 32 raw key bytes follow.
    public static let spkiPrefix: [UInt8] = [0x30, 0x2A, 0x30, 0x05, 0x06, 0x03, 0x2B, 0x65, 0x70, 0x03, 0x21, 0x00]
    /// DER prefix of an unencrypted Ed25519 PKCS#8 private key; the 32-byte seed follows.
    public static let pkcs8Prefix: [UInt8] = [0x30, 0x2E, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2B, 0x65, 0x70,
                                              0x04, 0x22, 0x04, 0x20]

    /// A `-----BEGIN PUBLIC KEY-----` PEM (SubjectPublicKeyInfo) holding an Ed25519 key.
    public static func publicKey(pem: String) throws -> Curve25519.Signing.PublicKey {
        let der = try pemBody(pem, label: "PUBLIC KEY")
        guard der.count == 44, Array(der.prefix(12)) == spkiPrefix else {
            throw BundleError(.artifact, "public key is not an Ed25519 SubjectPublicKeyInfo "
                + "(expected 44 DER bytes with prefix 302a300506032b6570032100)")
        }
        return try publicKey(raw: Data(der.suffix(32)))
    }

    public static func publicKey(raw: Data) throws -> Curve25519.Signing.PublicKey {
        do {
            return try Curve25519.Signing.PublicKey(rawRepresentation: raw)
        } catch {
            throw BundleError(.artifact, "not a 32-byte Ed25519 public key")
        }
    }

    /// PKCS#8 `-----BEGIN PRIVATE KEY-----` (tests use it to sign modified vectors).
    public static func privateKey(pem: String) throws -> Curve25519.Signing.PrivateKey {
        let der = try pemBody(pem, label: "PRIVATE KEY")
        guard der.count == 48, Array(der.prefix(16)) == pkcs8Prefix else {
            throw BundleError(.artifact, "private key is not an unencrypted Ed25519 PKCS#8 key")
        }
        do {
            return try Curve25519.Signing.PrivateKey(rawRepresentation: Data(der.suffix(32)))
        } catch {
            throw BundleError(.artifact, "not a 32-byte Ed25519 private key")
        }
    }

    /// 16 hex characters of sha256(raw public key): the manifest's `key_id`.
    public static func keyId(_ key: Curve25519.Signing.PublicKey) -> String {
        String(Hex.sha256(key.rawRepresentation).prefix(16))
    }

    public static func verify(_ key: Curve25519.Signing.PublicKey, signature: Data, message: Data) -> Bool {
        key.isValidSignature(signature, for: message)
    }

    private static func pemBody(_ pem: String, label: String) throws -> [UInt8] {
        let begin = "-----BEGIN \(label)-----"
        let end = "-----END \(label)-----"
        guard let a = pem.range(of: begin), let b = pem.range(of: end), a.upperBound <= b.lowerBound else {
            throw BundleError(.artifact, "not a PEM '\(label)'")
        }
        let body = pem[a.upperBound..<b.lowerBound].filter { !$0.isWhitespace }
        guard let der = Data(base64Encoded: String(body)) else {
            throw BundleError(.artifact, "PEM '\(label)' is not valid base64")
        }
        return [UInt8](der)
    }
}
