import CryptoKit
import Foundation

/// Constants of bundle format version 1 (docs/bundle-format.md).
public enum BundleFormat {
    public static let format = "loragen-bundle"
    public static let formatVersion: Int64 = 1
    public static let kinds = ["merged", "lora"]
    public static let signatureKey = "loragen.signature"
    public static let manifestKey = "loragen.manifest"
    public static let signatureHexLength = 128
    public static let unsigned = String(repeating: "0", count: signatureHexLength)
    /// Magnitude bounds (docs/bundle-format.md; Python `format.MAX_*`, Kotlin `BundleFormat.MAX_*`): every
    /// floating-point value a bundle carries and every merged weight is finite with |x| <= fp16's largest.
    public static let maxAbsValue: Double = 65504
    public static let maxLoraScale: Double = 1024
    public static let maxLoraRank: Int64 = 65536
}

/// A structurally valid bundle: header parsed, manifest parsed, offsets checked. Data stays in `source`.
public final class ParsedBundle: @unchecked Sendable {
    public let container: SafetensorsFile
    public let manifest: JSONObject
    public let signatureHex: String

    init(container: SafetensorsFile, manifest: JSONObject, signatureHex: String) {
        self.container = container
        self.manifest = manifest
        self.signatureHex = signatureHex
    }

    public var source: ByteSource { container.source }
    public var tensors: [JSONString: TensorEntry] { container.tensors }
    public var signed: Bool { signatureHex != BundleFormat.unsigned }

    /// SHA-256 of the whole file with the 128 signature characters replaced by ASCII '0', in one
    /// pass over the (mapped) file. The header must contain `"loragen.signature":"<hex>"` exactly once.
    public func signingDigest() throws -> Data {
        let needle = Array("\"\(BundleFormat.signatureKey)\":\"\(signatureHex)\"".utf8)
        let hb = container.headerBytes
        let at = ParsedBundle.indexOf(hb, needle, from: 0)
        if at < 0 || ParsedBundle.indexOf(hb, needle, from: at + 1) >= 0 {
            throw BundleError(.signatureField, "bundle header must contain '\"\(BundleFormat.signatureKey)\":\"<hex>\"' exactly once")
        }
        let start = 8 + at + needle.count - BundleFormat.signatureHexLength - 1
        let after = start + BundleFormat.signatureHexLength
        var h = SHA256()
        source.data.withUnsafeBytes { (raw: UnsafeRawBufferPointer) in
            h.update(bufferPointer: UnsafeRawBufferPointer(rebasing: raw[0..<start]))
            h.update(data: Array(BundleFormat.unsigned.utf8))
            h.update(bufferPointer: UnsafeRawBufferPointer(rebasing: raw[after..<raw.count]))
        }
        return Data(h.finalize())
    }

    /// Container checks, in the order of docs/bundle-format.md (Python `format.parse`).
    public static func parse(_ source: ByteSource) throws -> ParsedBundle {
        let (n, bytes, header) = try SafetensorsFile.readHeader(source)
        guard case .object(let meta)? = header["__metadata__"],
              meta.values.allSatisfy({ if case .string = $0 { return true }; return false }) else {
            throw BundleError(.metadata, "bundle header has no __metadata__ object of strings")
        }
        guard let sig = meta[BundleFormat.signatureKey]?.jsonString, sig.units.count == BundleFormat.signatureHexLength,
              sig.units.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x61 && $0 <= 0x66) }) else {
            throw BundleError(.signatureField, "bundle has no valid '\(BundleFormat.signatureKey)' (128 lowercase hex characters)")
        }
        let manifestValue: JSONValue
        do {
            manifestValue = try JSON.parse(units: meta[BundleFormat.manifestKey]?.jsonString?.units ?? [])
        } catch JSONError.duplicateKey(let k) {
            throw BundleError(.duplicateName, "bundle header has duplicate entry '\(k.string)'")
        } catch {
            throw BundleError(.manifest, "bundle has no valid '\(BundleFormat.manifestKey)' JSON")
        }
        guard case .object(let manifest) = manifestValue, PyJSON.equals(manifest["format"], .str(BundleFormat.format)) else {
            let f = manifestValue.objectValue?["format"]
            throw BundleError(.format, "not a \(BundleFormat.format) file (manifest format is \(PyJSON.repr(f)))")
        }
        // exactly the JSON integer 1: not 1.0, not true
        var versionOK = false
        if case .int(let v)? = manifest["format_version"], v == BundleFormat.formatVersion { versionOK = true }
        if !versionOK {
            throw BundleError(.version, "unsupported bundle format_version \(PyJSON.repr(manifest["format_version"])); "
                + "this reader supports \(BundleFormat.formatVersion)")
        }
        let entries = try SafetensorsFile.parseEntries(header, dataLength: source.size - 8 - n)
        let container = SafetensorsFile(source: source, headerLength: n, headerBytes: bytes, header: header, entries: entries)
        return ParsedBundle(container: container, manifest: manifest, signatureHex: sig.string)
    }

    /// First index of `needle` in `hay` at or after `from`, or -1.
    static func indexOf(_ hay: Data, _ needle: [UInt8], from: Int) -> Int {
        hay.withUnsafeBytes { (h: UnsafeRawBufferPointer) -> Int in
            let n = needle.count
            guard n > 0, h.count >= n, from <= h.count - n else { return -1 }
            var i = max(0, from)
            while i <= h.count - n {
                if h[i] == needle[0] {
                    var j = 1
                    while j < n && h[i + j] == needle[j] { j += 1 }
                    if j == n { return i }
                }
                i += 1
            }
            return -1
        }
    }
}

/// A base artifact's manifest (`artifact.json`): backend, fingerprint and swap slots. Slots are
/// checked lazily (`slotsByParam()`), where the Python reference checks them.
public final class Artifact: @unchecked Sendable {
    public let json: JSONObject

    public init(json: JSONObject) { self.json = json }

    public var backend: JSONValue? { json["backend"] }
    public var fingerprint: JSONValue? { json["fingerprint"] }
    public var backendName: String { json.str("backend") ?? "?" }
    public var fingerprintText: String { json.str("fingerprint") ?? "" }

    /// Slot fields that describe the tensor rather than where the backend keeps it.
    public static let descriptive: Set<String> = ["name", "dtype", "shape", "nbytes", "sha256"]

    /// Parameter name -> slot, in artifact order (Python `core.slots_by_param`: a later slot of the
    /// same name replaces an earlier one at its position).
    public func slotsByParam() throws -> (order: [JSONString], slots: [JSONString: JSONObject]) {
        var list: [JSONObject] = []
        switch json["swap_slots"] {
        case .object(let o)?:
            for (k, v) in o.entries {
                guard case .object(let body) = v else {
                    throw BundleError(.artifact, "artifact swap slot \(k.string) is not an object")
                }
                var m = JSONObject()
                m["name"] = .string(k)
                for (bk, bv) in body.entries { m[bk] = bv }
                list.append(m)
            }
        case .array(let a)?:
            for v in a {
                guard case .object(let s) = v else { throw BundleError(.artifact, "artifact swap slot is not an object") }
                list.append(s)
            }
        default:
            break
        }
        if list.isEmpty { throw BundleError(.slot, "artifact has no swap slots; re-export it with loragen export") }
        var order: [JSONString] = []
        var slots: [JSONString: JSONObject] = [:]
        for s in list {
            guard let name = s["name"]?.jsonString else { throw BundleError(.artifact, "artifact swap slot without a name") }
            if slots[name] == nil { order.append(name) }
            slots[name] = s
        }
        return (order, slots)
    }

    /// Where the backend keeps a tensor: the slot minus its descriptive fields.
    public static func locator(_ slot: JSONObject) -> JSONObject {
        var m = JSONObject()
        for (k, v) in slot.entries where !descriptive.contains(k.string) {
            m[k] = v
        }
        return m
    }

    public static func parse(_ text: String) throws -> Artifact {
        let v: JSONValue
        do {
            v = try JSON.parse(text)
        } catch {
            throw BundleError(.artifact, "artifact.json is not valid JSON: \(error)")
        }
        guard case .object(let o) = v else { throw BundleError(.artifact, "artifact.json is not a JSON object") }
        return Artifact(json: o)
    }

    public static func read(_ url: URL) throws -> Artifact {
        let data: Data
        do {
            data = try Data(contentsOf: url)
        } catch {
            throw BundleError(.artifact, "cannot read \(url.lastPathComponent): \(error.localizedDescription)")
        }
        guard let text = String(data: data, encoding: .utf8) else {
            throw BundleError(.artifact, "\(url.lastPathComponent) is not UTF-8")
        }
        return try parse(text)
    }
}

/// A bundle that passed every check of docs/bundle-format.md against `artifact`.
public final class VerifiedBundle: @unchecked Sendable {
    public let parsed: ParsedBundle
    public let kind: String
    public let manifest: JSONObject
    public let artifact: Artifact
    /// True when an Ed25519 signature was verified; false only for an admitted unsigned bundle.
    public let signatureVerified: Bool

    init(parsed: ParsedBundle, kind: String, manifest: JSONObject, artifact: Artifact, signatureVerified: Bool) {
        self.parsed = parsed
        self.kind = kind
        self.manifest = manifest
        self.artifact = artifact
        self.signatureVerified = signatureVerified
    }

    /// The `lora` entry {r, alpha, scale} of a lora bundle.
    public var lora: JSONObject? { manifest.obj("lora") }

    /// The parameters this bundle replaces, in code-point order.
    public var params: [JSONString] {
        let ps = (manifest.obj("tensors")?.values ?? []).compactMap { $0.objectValue?["param"]?.jsonString }
        return CodePointOrder.sorted(Set(ps))
    }
}

public enum BundleVerifier {
    /// Every check a phone makes before a swap (Python `core.verify`), in the documented order;
    /// throws `BundleError` with the first failure's code. With a public key the signature must
    /// verify; without one, `requireSignature` decides whether the bundle is refused (`key_required`).
    public static func verify(_ source: ByteSource, artifact: Artifact, publicKey: Curve25519.Signing.PublicKey?,
                              requireSignature: Bool = true) throws -> VerifiedBundle {
        let pb = try ParsedBundle.parse(source)
        let verified = try checkSignature(pb, publicKey: publicKey, requireSignature: requireSignature)
        let m = pb.manifest
        guard let kindS = m["kind"]?.jsonString, let kind = BundleFormat.kinds.first(where: { JSONString($0) == kindS }) else {
            throw BundleError(.kind, "bundle kind \(PyJSON.repr(m["kind"])) is not one of \(BundleFormat.kinds.joined(separator: ", "))")
        }
        let base = m.obj("base") ?? JSONObject()
        if !PyJSON.strictEquals(base["backend"], artifact.backend) {
            throw BundleError(.backend, "bundle is for backend \(PyJSON.repr(base["backend"])), the artifact is \(PyJSON.repr(artifact.backend))")
        }
        if !PyJSON.strictEquals(base["fingerprint"], artifact.fingerprint) {
            throw BundleError(.fingerprint, "bundle is bound to base fingerprint \(String(PyJSON.str(base["fingerprint"]).prefix(16)))..., "
                + "the artifact's is \(String(PyJSON.str(artifact.fingerprint).prefix(16)))...")
        }
        guard case .object(let entries)? = m["tensors"], entries.values.allSatisfy({ $0.objectValue != nil }) else {
            throw BundleError(.manifest, "bundle manifest has no valid 'tensors' object")
        }
        for name in CodePointOrder.sorted(entries.keys) {
            let e = entries[name]!.objectValue!
            for k in ["param", "slot", "dtype", "shape", "sha256"] where !entryFieldOK(k, e[k]) {
                throw BundleError(.manifest, "bundle manifest entry of tensor \(name.string) has no valid '\(k)'")
            }
        }
        let headerNames = Set(pb.tensors.keys)
        let manifestNames = Set(entries.keys)
        if manifestNames != headerNames {
            let diff = CodePointOrder.sorted(manifestNames.symmetricDifference(headerNames))
            throw BundleError(.manifest, "bundle manifest and tensors disagree on \(PyJSON.repr(.array(diff.prefix(1).map { JSONValue.string($0) })))")
        }
        let slots = try artifact.slotsByParam().slots
        var expected: Set<JSONString>
        if kind == "merged" {
            expected = Set(slots.keys)
        } else {
            expected = []
            for v in entries.values {
                if let p = v.objectValue?["param"]?.jsonString, slots[p] != nil {
                    let module = moduleOf(p)
                    expected.insert(module.appending(".lora_A"))
                    expected.insert(module.appending(".lora_B"))
                }
            }
            guard let lora = m.obj("lora") else {
                throw BundleError(.manifest, "lora bundle has no valid 'lora' {r, alpha, scale = alpha / r} entry")
            }
            _ = try checkLoraParams(lora["r"], lora["alpha"], lora["scale"])
        }
        let missing = CodePointOrder.sorted(expected.subtracting(headerNames))
        let extra = CodePointOrder.sorted(headerNames.subtracting(expected))
        if let first = missing.first { throw BundleError(.missingTensor, "bundle is missing tensor \(first.string)") }
        if let first = extra.first {
            throw BundleError(.extraTensor, "bundle has unexpected tensor \(first.string) (no such swap slot in the artifact)")
        }
        let r = m.obj("lora")?["r"]
        for name in CodePointOrder.sorted(entries.keys) {
            let e = entries[name]!.objectValue!
            let te = pb.tensors[name]!
            let param = e["param"]
            guard let p = param?.jsonString, let slot = slots[p] else {
                throw BundleError(.slot, "tensor \(name.string) names parameter \(PyJSON.repr(param)), which has no swap slot")
            }
            let loc = Artifact.locator(slot)
            if !PyJSON.strictEquals(e["slot"], .object(loc)) {
                throw BundleError(.slot, "tensor \(name.string) is addressed to slot \(PyJSON.str(e["slot"])), the artifact has \(PyJSON.repr(.object(loc)))")
            }
            if !PyJSON.strictEquals(e["dtype"], .str(te.dtype.rawValue)) || !PyJSON.strictEquals(e["shape"], .array(te.shapeValues)) {
                throw BundleError(.manifest, "tensor \(name.string): manifest says \(PyJSON.str(e["dtype"])) \(PyJSON.str(e["shape"])), "
                    + "data is \(te.dtype.rawValue) \(PyJSON.repr(.array(te.shapeValues)))")
            }
            guard let slotDtype = slot.str("dtype") else { throw BundleError(.artifact, "swap slot \(p.string) has no dtype") }
            let want = DType.stName(slotDtype)
            if te.dtype.rawValue != want {
                throw BundleError(.dtype, "tensor \(name.string) has dtype \(te.dtype.rawValue), the artifact's slot is \(want)")
            }
            guard case .array(let sshape)? = slot["shape"], sshape.count == 2 else {
                throw BundleError(.artifact, "swap slot \(p.string) has no 2-D shape")
            }
            let ts = te.shapeValues
            let ok: Bool
            if kind == "merged" {
                ok = PyJSON.equals(.array(ts), .array(sshape))
            } else if name.hasSuffix(".lora_A") {
                ok = ts.count == 2 && PyJSON.equals(ts[1], sshape[1]) && PyJSON.equals(ts[0], r)
            } else {
                ok = ts.count == 2 && PyJSON.equals(ts[0], sshape[0]) && PyJSON.equals(ts[1], r)
            }
            if !ok {
                throw BundleError(.shape, "tensor \(name.string) has shape \(PyJSON.repr(.array(ts))), which does not fit slot shape \(PyJSON.repr(.array(sshape)))")
            }
            if !PyJSON.equals(pb.container.tensorSHA256(name).map { JSONValue.str($0) }, e["sha256"]) {
                throw BundleError(.digest, "tensor \(name.string) does not match its sha256 in the manifest")
            }
            if let why = try valueViolation(pb.container.tensorData(name) ?? Data(), te.dtype) {
                throw BundleError(.values, "tensor \(name.string) has \(why)")
            }
        }
        return VerifiedBundle(parsed: pb, kind: kind, manifest: m, artifact: artifact, signatureVerified: verified)
    }

    /// Manifest tensor entry fields and their JSON types (Python `core._ENTRY_TYPES`).
    static func entryFieldOK(_ field: String, _ v: JSONValue?) -> Bool {
        switch field {
        case "slot": return v?.objectValue != nil
        case "shape": if case .array(_)? = v { return true }; return false
        default: return v?.jsonString != nil
        }
    }

    /// The signature rule (Python `format.check_signature`, Kotlin `BundleVerifier.checkSignature`): a bundle
    /// that carries a signature is always verified, so it needs `publicKey`, and a bad signature is always
    /// refused; `requireSignature = false` admits only bundles carrying the all-zero "unsigned" signature.
    /// Returns true when a signature was verified.
    public static func checkSignature(_ pb: ParsedBundle, publicKey: Curve25519.Signing.PublicKey?,
                                      requireSignature: Bool) throws -> Bool {
        if pb.signed {
            guard let key = publicKey else {
                throw BundleError(.keyRequired, "bundle is signed: a public key is required to verify it (unsigned bundles only may be admitted without one)")
            }
            let digest = try pb.signingDigest()
            guard let sig = Hex.decode(pb.signatureHex), Ed25519.verify(key, signature: sig, message: digest) else {
                throw BundleError(.badSignature,
                                  "bundle signature does not verify with this public key (tampered or signed with another key)")
            }
            return true
        }
        if requireSignature {
            if publicKey == nil { throw BundleError(.keyRequired, "a public key is required to verify this bundle") }
            throw BundleError(.unsigned, "bundle is unsigned but a public key was given")
        }
        _ = try pb.signingDigest() // the signature field must still be well formed and unique
        return false
    }

    /// r: an integer 1...maxLoraRank; alpha, scale: finite numbers, |scale| <= maxLoraScale, scale = alpha / r
    /// (relative 1e-9). Returns r. (Python `core.check_lora_params`.)
    public static func checkLoraParams(_ r: JSONValue?, _ alpha: JSONValue?, _ scale: JSONValue?) throws -> Int64 {
        guard case .int(let rv)? = r, rv >= 1, rv <= BundleFormat.maxLoraRank,
              let a = PyJSON.finite(alpha), let sc = PyJSON.finite(scale), abs(sc) <= BundleFormat.maxLoraScale,
              !(abs(sc - a / Double(rv)) > 1e-9 * Swift.max(1.0, abs(sc))) else {
            throw BundleError(.manifest, "lora bundle has no valid 'lora' {r, alpha, scale = alpha / r} entry (r an integer "
                + "1...\(BundleFormat.maxLoraRank), alpha and scale finite, |scale| <= \(BundleFormat.maxLoraScale))")
        }
        return rv
    }

    /// Why a tensor's floating-point values break the bounds, or nil (Python `format.value_violation`).
    public static func valueViolation(_ data: Data, _ dtype: DType) throws -> String? {
        guard dtype == .F32 || dtype == .F16 || dtype == .BF16 else { return nil }
        var peak: Float = 0
        for x in try LoraMerge.toFloats(data, dtype) {
            if !x.isFinite { return "NaN or Inf values" }
            peak = Swift.max(peak, abs(x))
        }
        return Double(peak) > BundleFormat.maxAbsValue ? "a value of magnitude \(peak), beyond the bound \(BundleFormat.maxAbsValue)" : nil
    }

    /// `model.layers.0.mlp.up_proj.weight` -> `model.layers.0.mlp.up_proj`.
    public static func moduleOf(_ param: JSONString) -> JSONString { param.droppingSuffix(".weight") }
}
