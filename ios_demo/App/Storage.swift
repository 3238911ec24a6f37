import Foundation
import LoRAGenKit

/// Where things live on the device.
///
/// - `Documents/artifacts/<name>/`: exported artifacts, copied in with the Files app or Finder
///   (the app enables file sharing): `artifact.json`, `tokenizer.json` and either `model.mlpackage`
///   (Core ML) or `model.pte` + `model.ptd` (ExecuTorch: one data file holding all weights).
/// - `Documents/keys/server.pub`: the service's Ed25519 public key (`loragen bundle keygen`).
/// - `Application Support/compiled/<fingerprint>/model.mlmodelc`: the pristine compiled Core ML model.
/// - `Application Support/bundles/`: downloaded bundles (`<id>.bundle`, `<id>.json`), and their
///   swapped weights (`swapped/<id>.mlmodelc` for Core ML, `swapped/<id>.ptd` for ExecuTorch: a copy
///   of the artifact's `model.ptd` with the swap slots' bytes replaced).
enum Storage {
    static var documents: URL { FileManager.default.urls(for: .documentDirectory, in: .userDomainMask)[0] }
    static var support: URL { FileManager.default.urls(for: .applicationSupportDirectory, in: .userDomainMask)[0] }
    static var artifacts: URL { documents.appendingPathComponent("artifacts", isDirectory: true) }
    static var publicKey: URL { documents.appendingPathComponent("keys/server.pub") }
    static var bundles: URL { support.appendingPathComponent("bundles", isDirectory: true) }

    static func compiledModel(fingerprint: String) -> URL {
        support.appendingPathComponent("compiled/\(fingerprint)/model.mlmodelc", isDirectory: true)
    }

    static func ensureDirectories() {
        let fm = FileManager.default
        for d in [artifacts, documents.appendingPathComponent("keys"), bundles.appendingPathComponent("swapped")] {
            try? fm.createDirectory(at: d, withIntermediateDirectories: true)
        }
    }
}

/// An exported artifact directory on the device.
final class LocalArtifact: Identifiable, @unchecked Sendable {
    let dir: URL
    let manifest: Artifact

    init(dir: URL) throws {
        self.dir = dir
        self.manifest = try Artifact.read(dir.appendingPathComponent("artifact.json"))
    }

    var id: String { dir.path }
    var name: String { dir.lastPathComponent }
    var backend: String { manifest.backendName }
    var fingerprint: String { manifest.fingerprintText }
    var maxContext: Int { manifest.json["max_context"]?.intValue ?? 128 }
    var eosTokenId: Int? { manifest.json["eos_token_id"]?.intValue }

    static func all() -> [LocalArtifact] {
        let dirs = (try? FileManager.default.contentsOfDirectory(at: Storage.artifacts, includingPropertiesForKeys: nil)) ?? []
        return dirs.compactMap { try? LocalArtifact(dir: $0) }
            .filter { $0.backend == "coreml" || $0.backend == "executorch" }
            .sorted { $0.name < $1.name }
    }
}

struct CachedBundle: Identifiable, Hashable, Sendable {
    let id: String
    let task: String
    let kind: String
    let fingerprint: String
    let file: URL
}

/// Downloaded bundles, per artifact fingerprint. A bundle is re-verified every time it is used.
enum BundleStore {
    static func file(_ id: String) -> URL { Storage.bundles.appendingPathComponent("\(id).bundle") }
    static func swappedModel(_ id: String) -> URL { Storage.bundles.appendingPathComponent("swapped/\(id).mlmodelc", isDirectory: true) }
    static func swapPtd(_ id: String) -> URL { Storage.bundles.appendingPathComponent("swapped/\(id).ptd") }

    static func remember(id: String, task: String, kind: String, fingerprint: String) throws {
        let o = JSONObject([("task", .str(task)), ("kind", .str(kind)), ("fingerprint", .str(fingerprint))])
        try Data(PyJSON.dumps(.object(o)).utf8).write(to: Storage.bundles.appendingPathComponent("\(id).json"), options: .atomic)
    }

    static func cached(fingerprint: String) -> [CachedBundle] {
        let files = (try? FileManager.default.contentsOfDirectory(at: Storage.bundles, includingPropertiesForKeys: nil)) ?? []
        return files.filter { $0.pathExtension == "json" }.compactMap { url -> CachedBundle? in
            guard let data = try? Data(contentsOf: url), case .object(let o)? = try? JSON.parse(String(decoding: data, as: UTF8.self)) else {
                return nil
            }
            let id = url.deletingPathExtension().lastPathComponent
            let b = CachedBundle(id: id, task: o.str("task") ?? "", kind: o.str("kind") ?? "", fingerprint: o.str("fingerprint") ?? "",
                                 file: file(id))
            return b.fingerprint == fingerprint && FileManager.default.fileExists(atPath: b.file.path) ? b : nil
        }
        .sorted { $0.task < $1.task }
    }
}
