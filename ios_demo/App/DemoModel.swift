import CryptoKit
import Foundation
import LoRAGenKit
import Observation

struct ChatLine: Identifiable, Sendable {
    let id = UUID()
    let fromUser: Bool
    var text: String
}

/// The demo's state and actions. Heavy work (compiling, verifying, swapping, generating) runs off
/// the main actor; any `BundleError` is shown as `refused [code]: message` and the current weights
/// stay.
@Observable
@MainActor
final class DemoModel {
    var serviceURL = "http://localhost:8080"
    var apiKey = ""
    var task = ""
    var kind = "merged"
    var status = ""
    var progress: Double?
    var busy = false
    var artifacts: [LocalArtifact] = []
    var selected: LocalArtifact?
    var cached: [CachedBundle] = []
    /// "base" or the id of the bundle in use.
    var active = "base"
    var chat: [ChatLine] = []
    var tokensPerSecond: Double?
    /// Token count of the system prompt a base model would need in every request for the same task.
    var savedTokens: Int?

    @ObservationIgnored private var engine: ChatEngine?
    @ObservationIgnored private var pristineCompiled: URL?
    @ObservationIgnored private var work: Task<Void, Never>?

    init() {
        Storage.ensureDirectories()
        refreshArtifacts()
    }

    func refreshArtifacts() {
        artifacts = LocalArtifact.all()
        if artifacts.isEmpty {
            status = "No artifacts: copy an exported artifact directory into the app's Documents/artifacts/ (Files app or Finder)."
        }
    }

    /// Runs `block` off the main actor; errors become the status line.
    private func run(_ what: String, _ block: @escaping @Sendable () async throws -> Void) {
        if busy { return }
        busy = true
        work = Task {
            do {
                try await Task.detached(priority: .userInitiated) { try await block() }.value
            } catch let e as BundleError {
                status = "\(what) refused [\(e.code)]: \(e.message)" // nothing was swapped
            } catch is CancellationError {
                status = "\(what) cancelled"
            } catch {
                status = "\(what) failed: \(error.localizedDescription)"
            }
            busy = false
            progress = nil
        }
    }

    func cancel() {
        work?.cancel()
        engine?.stop.set(true)
    }

    /// Applies a state change on the main actor (callers off it `await` the hop).
    private func set(_ update: @MainActor (DemoModel) -> Void) {
        update(self)
    }

    nonisolated private static func publicKey() throws -> Curve25519.Signing.PublicKey {
        guard let pem = try? String(contentsOf: Storage.publicKey, encoding: .utf8) else {
            throw BundleError(.keyRequired, "no public key at Documents/keys/server.pub: copy the service's server.pub there")
        }
        return try Ed25519.publicKey(pem: pem)
    }

    // MARK: - artifacts

    /// Loads an artifact with its base weights. Core ML: checks the package against artifact.json's
    /// fingerprint, compiles it once, and checks every swap slot in the compiled weight.bin.
    func select(_ a: LocalArtifact) {
        run("Loading \(a.name)") { [self] in
            let tokenizer = try Tokenizer(url: a.dir.appendingPathComponent("tokenizer.json"))
            let model: TokenModel
            var compiled: URL?
            switch a.backend {
            case "coreml":
                guard #available(iOS 18.0, macOS 15.0, *) else {
                    throw BundleError(.backend, "the Core ML artifact is a stateful iOS 18 model; this device runs an older iOS")
                }
                let package = a.dir.appendingPathComponent("model.mlpackage")
                await set { $0.status = "Checking the package fingerprint..." }
                let fp = try CoreMLSwap.fingerprint(package: package, artifact: a.manifest)
                if fp != a.fingerprint {
                    throw BundleError(.fingerprint, "model.mlpackage does not match artifact.json (fingerprint \(fp.prefix(16))...)")
                }
                let dest = Storage.compiledModel(fingerprint: a.fingerprint)
                if !FileManager.default.fileExists(atPath: dest.path) {
                    await set { $0.status = "Compiling the Core ML model (once per artifact)..." }
                    try await CoreMLSwap.compile(package: package, to: dest)
                }
                // the compiled weight.bin must hold every slot where the exporter recorded it
                let weights = try ByteSource.open(dest.appendingPathComponent(CoreMLSwap.compiledWeights))
                try CoreMLSwap.checkSlots(a.manifest, weights: weights, checkDigests: true)
                compiled = dest
                model = CoreMLEngine(pristine: dest, maxContext: a.maxContext)
            case "executorch":
                #if canImport(ExecuTorch)
                model = ExecuTorchEngine(dir: a.dir, maxContext: a.maxContext)
                #else
                throw BundleError(.backend, "this build has no ExecuTorch runtime: add the ExecuTorch package to the app target")
                #endif
            default:
                // ONNX Runtime's Objective-C API has no way to override initializers at session
                // creation, so iOS swaps through Core ML and ExecuTorch only (README)
                throw BundleError(.backend, "backend \(a.backend) is not supported on iOS")
            }
            let e = ChatEngine(model: model, tokenizer: tokenizer, eosId: a.eosTokenId)
            try e.load(.base)
            let bundles = BundleStore.cached(fingerprint: a.fingerprint)
            await set {
                $0.engine = e
                $0.pristineCompiled = compiled
                $0.selected = a
                $0.active = "base"
                $0.cached = bundles
                $0.savedTokens = nil
                $0.status = "Loaded \(a.name) (\(a.backend)), base weights"
            }
        }
    }

    // MARK: - bundles

    func useBase() {
        guard let e = engine else { status = "load an artifact first"; return }
        run("Switching to base") { [self] in
            try e.load(.base)
            await set { $0.active = "base"; $0.savedTokens = nil; $0.status = "Base model" }
        }
    }

    func use(_ b: CachedBundle) {
        guard let a = selected, let e = engine else { status = "load an artifact first"; return }
        let compiled = pristineCompiled
        run("Swapping in \(b.id.prefix(8))") { [self] in
            try await self.swapIn(a, e, compiled, id: b.id, file: b.file, task: b.task)
        }
    }

    /// Asks the service for a bundle, downloads it (resumable), verifies it and swaps it in.
    func specialize() {
        guard let a = selected, let e = engine else { status = "load an artifact first"; return }
        let description = task.trimmingCharacters(in: .whitespacesAndNewlines)
        guard !description.isEmpty else { status = "type a task description"; return }
        guard let base = URL(string: serviceURL) else { status = "invalid service URL"; return }
        let client = ServiceClient(baseURL: base, apiKey: apiKey)
        let kind = self.kind
        let compiled = pristineCompiled
        run("Specialization") { [self] in
            await set { $0.status = "Requesting a \(kind) bundle..." }
            let info = try await client.specialize(task: description, artifact: a.fingerprint, kind: kind)
            await set { $0.status = "Downloading \(info.size) bytes..." }
            let file = try await DownloadManager(client: client).download(info, to: BundleStore.file(info.id)) { done, total in
                Task { @MainActor in self.progress = total > 0 ? Double(done) / Double(total) : nil }
            }
            try BundleStore.remember(id: info.id, task: description, kind: kind, fingerprint: a.fingerprint)
            try await self.swapIn(a, e, compiled, id: info.id, file: file, task: description)
            let bundles = BundleStore.cached(fingerprint: a.fingerprint)
            await set { $0.cached = bundles }
        }
    }

    /// Verify (signature required), then swap: nothing changes unless every check passed.
    nonisolated private func swapIn(_ a: LocalArtifact, _ e: ChatEngine, _ compiled: URL?, id: String, file: URL, task: String) async throws {
        await set { $0.status = "Verifying..." }
        let key = try Self.publicKey()
        let vb = try BundleVerifier.verify(try ByteSource.open(file), artifact: a.manifest, publicKey: key, requireSignature: true)
        await set { $0.status = "Swapping \(vb.params.count) tensors (\(vb.kind))..." }
        let weights: Weights
        switch a.backend {
        case "coreml":
            guard let pristine = compiled else { throw BundleError(.build, "no compiled model") }
            let dest = BundleStore.swappedModel(id)
            try CoreMLSwap.writePatchedCopy(of: pristine, to: dest, bundle: vb)
            weights = .bundle(id: id, url: dest)
        default:
            let dest = BundleStore.swapPtd(id)
            // model.ptd with the slots' bytes replaced; lora bundles are merged from model.ptd
            try ExecuTorchSwap.writeSwapped(bundle: vb, artifactPtd: a.dir.appendingPathComponent("model.ptd"), to: dest)
            weights = .bundle(id: id, url: dest)
        }
        try e.load(weights)
        let withTask = try Self.prompt(a, "", system: task), without = try Self.prompt(a, "")
        let saved = e.tokenizer.encode(withTask, addSpecialTokens: false).count
            - e.tokenizer.encode(without, addSpecialTokens: false).count
        let n = vb.params.count
        await set {
            $0.active = id
            $0.savedTokens = saved
            $0.status = "Using bundle \(id.prefix(8)) (\(n) tensors swapped)"
        }
    }

    /// The text for `message` (and an optional system message: the task description a non-specialized
    /// model would need in context), as the artifact's chat template renders it: artifact.json
    /// "prompt_format", written by `loragen export` (the engine's tokenizer adds the BOS id).
    nonisolated static func prompt(_ a: LocalArtifact, _ message: String, system: String? = nil) throws -> String {
        guard let fmt = a.manifest.json["prompt_format"]?.objectValue,
              let template = fmt[system == nil ? "without_system" : "with_system"]?.stringValue else {
            throw BundleError(.artifact, "artifact.json has no prompt_format; re-export it with loragen export")
        }
        var out = "", i = template.startIndex
        while i < template.endIndex {
            let rest = template[i...]
            if rest.hasPrefix("{input}") {
                out += message; i = template.index(i, offsetBy: 7)
            } else if let s = system, rest.hasPrefix("{system}") {
                out += s; i = template.index(i, offsetBy: 8)
            } else {
                out.append(template[i]); i = template.index(after: i)
            }
        }
        return out
    }

    // MARK: - chat

    func send(_ message: String) {
        guard let a = selected, let e = engine else { status = "load an artifact first"; return }
        let text = message.trimmingCharacters(in: .whitespacesAndNewlines)
        if text.isEmpty { return }
        chat.append(ChatLine(fromUser: true, text: text))
        chat.append(ChatLine(fromUser: false, text: ""))
        let idx = chat.count - 1
        run("Generation") { [self] in
            let stats = try e.generate(prompt: Self.prompt(a, text), maxNewTokens: 128) { piece in
                // the main queue runs these in order, so the text arrives in token order
                DispatchQueue.main.async { MainActor.assumeIsolated { self.chat[idx].text += piece } }
            }
            await set { $0.tokensPerSecond = stats.tokensPerSecond }
        }
    }
}
