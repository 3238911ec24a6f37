import Foundation
import LoRAGenKit

/// A bundle the service made: the `POST /v1/specializations` response.
struct BundleInfo: Sendable {
    let id: String
    let size: Int
    let sha256: String
    let url: String
    let manifest: JSONObject?
}

struct RemoteArtifact: Sendable {
    let name: String
    let fingerprint: String
    let backend: String
}

/// An error answer of the service: HTTP status, its stable `error.code` and one-line message.
struct ServiceError: LocalizedError, Sendable {
    let status: Int
    let code: String
    let message: String
    var errorDescription: String? { "[\(code)] \(message)" }
}

/// The loragen service API (JSON over HTTP, `X-API-Key` on every call).
struct ServiceClient: Sendable {
    let baseURL: URL
    let apiKey: String
    var session: URLSession = .shared

    func url(_ path: String) -> URL {
        if let absolute = URL(string: path), absolute.scheme != nil { return absolute }
        return URL(string: baseURL.absoluteString.trimmingCharacters(in: CharacterSet(charactersIn: "/")) + path)!
    }

    func request(_ path: String, method: String = "GET", accept: String = "application/json") -> URLRequest {
        var r = URLRequest(url: url(path))
        r.httpMethod = method
        r.timeoutInterval = 120 // a first specialization can take a while
        r.setValue(apiKey, forHTTPHeaderField: "X-API-Key")
        r.setValue(accept, forHTTPHeaderField: "Accept")
        return r
    }

    /// The service's error object, or a generic one for the status.
    static func error(status: Int, body: Data) -> ServiceError {
        if case .object(let o)? = try? JSON.parse(String(decoding: body, as: UTF8.self)), let e = o.obj("error") {
            return ServiceError(status: status, code: e.str("code") ?? "http_\(status)", message: e.str("message") ?? "HTTP \(status)")
        }
        return ServiceError(status: status, code: "http_\(status)", message: "HTTP \(status)")
    }

    private func json(_ r: URLRequest) async throws -> JSONObject {
        let (data, response) = try await session.data(for: r)
        let status = (response as? HTTPURLResponse)?.statusCode ?? 0
        if status >= 400 { throw Self.error(status: status, body: data) }
        guard case .object(let o)? = try? JSON.parse(String(decoding: data, as: UTF8.self)) else {
            throw ServiceError(status: status, code: "bad_response", message: "the service returned non-JSON")
        }
        return o
    }

    func artifacts() async throws -> [RemoteArtifact] {
        let o = try await json(request("/v1/artifacts"))
        return (o["artifacts"]?.arrayValue ?? []).compactMap { v in
            guard let a = v.objectValue, let name = a.str("name") else { return nil }
            return RemoteArtifact(name: name, fingerprint: a.str("fingerprint") ?? "", backend: a.str("backend") ?? "")
        }
    }

    /// `POST /v1/specializations {"task", "artifact", "kind"}`: 201 (made now) or 200 (cached).
    /// `artifact` is the artifact's name or fingerprint on the service.
    func specialize(task: String, artifact: String, kind: String) async throws -> BundleInfo {
        var r = request("/v1/specializations", method: "POST")
        r.setValue("application/json; charset=utf-8", forHTTPHeaderField: "Content-Type")
        let body = JSONObject([("task", .str(task)), ("artifact", .str(artifact)), ("kind", .str(kind))])
        r.httpBody = Data(PyJSON.dumps(.object(body)).utf8)
        let o = try await json(r)
        guard let id = o.str("id"), let size = o["size"]?.intValue, let sha = o.str("sha256") else {
            throw ServiceError(status: 200, code: "bad_response", message: "the specialization response has no id, size or sha256")
        }
        return BundleInfo(id: id, size: size, sha256: sha, url: o.str("url") ?? "/v1/bundles/\(id)", manifest: o.obj("manifest"))
    }
}
