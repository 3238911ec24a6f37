import CryptoKit
import Foundation
import LoRAGenKit

/// Downloads a bundle with `GET /v1/bundles/{id}`, resumable: bytes go to `<id>.bundle.part`; a
/// later attempt sends `Range: bytes=<have>-` with `If-Range: <ETag>` (the service's ETag is the
/// bundle's sha256), so an unchanged bundle continues where it stopped (206) and a changed one
/// restarts from 0 (200). The size and sha256 the service announced are checked before the file
/// is moved into place; the caller then verifies the bundle itself (signature and all).
struct DownloadManager: Sendable {
    let client: ServiceClient

    private static let chunk = 1 << 16

    func download(_ info: BundleInfo, to dest: URL, progress: @escaping @Sendable (Int, Int) -> Void) async throws -> URL {
        let fm = FileManager.default
        if fm.fileExists(atPath: dest.path), (try? Self.sha256(of: dest)) == info.sha256 { return dest }
        let part = dest.appendingPathExtension("part")
        let etagFile = dest.appendingPathExtension("etag")
        var have = (try? fm.attributesOfItem(atPath: part.path)[.size] as? Int) ?? 0
        var req = client.request(info.url, accept: "application/octet-stream")
        if have > 0, let etag = try? String(contentsOf: etagFile, encoding: .utf8) {
            req.setValue("bytes=\(have)-", forHTTPHeaderField: "Range")
            req.setValue(etag, forHTTPHeaderField: "If-Range")
        }
        let (bytes, response) = try await client.session.bytes(for: req)
        guard let http = response as? HTTPURLResponse else {
            throw ServiceError(status: 0, code: "bad_response", message: "not an HTTP response")
        }
        if http.statusCode >= 400 {
            var body = Data()
            for try await b in bytes {
                body.append(b)
                if body.count > 1 << 16 { break }
            }
            if http.statusCode == 416 { // the part file is longer than the bundle: start over
                try? fm.removeItem(at: part)
                try? fm.removeItem(at: etagFile)
            }
            throw ServiceClient.error(status: http.statusCode, body: body)
        }
        if http.statusCode == 200 {
            have = 0 // the whole file (no range asked, or the bundle changed)
        } else if http.statusCode == 206 {
            let range = http.value(forHTTPHeaderField: "Content-Range") ?? ""
            guard range.hasPrefix("bytes \(have)-") else {
                throw ServiceError(status: 206, code: "bad_response", message: "unexpected Content-Range '\(range)'")
            }
        } else {
            throw ServiceError(status: http.statusCode, code: "bad_response", message: "unexpected HTTP \(http.statusCode)")
        }
        if let etag = http.value(forHTTPHeaderField: "ETag") { try Data(etag.utf8).write(to: etagFile, options: .atomic) }
        if !fm.fileExists(atPath: part.path) { fm.createFile(atPath: part.path, contents: nil) }
        let h = try FileHandle(forWritingTo: part)
        defer { try? h.close() }
        try h.truncate(atOffset: UInt64(have))
        try h.seekToEnd()
        let total = info.size
        var done = have
        var buffer = Data()
        buffer.reserveCapacity(Self.chunk)
        progress(done, total)
        for try await b in bytes { // cancelling the task throws here; the part file stays for a resume
            buffer.append(b)
            if buffer.count >= Self.chunk {
                try h.write(contentsOf: buffer)
                done += buffer.count
                buffer.removeAll(keepingCapacity: true)
                progress(done, total)
            }
        }
        try h.write(contentsOf: buffer)
        done += buffer.count
        try h.synchronize()
        progress(done, total)
        if done != total {
            throw ServiceError(status: http.statusCode, code: "incomplete", message: "download incomplete: \(done) of \(total) bytes (resumable)")
        }
        if try Self.sha256(of: part) != info.sha256 {
            try? fm.removeItem(at: part)
            try? fm.removeItem(at: etagFile)
            throw ServiceError(status: http.statusCode, code: "sha256", message: "downloaded bytes do not match the announced sha256; discarded")
        }
        if fm.fileExists(atPath: dest.path) { try fm.removeItem(at: dest) }
        try fm.moveItem(at: part, to: dest)
        try? fm.removeItem(at: etagFile)
        return dest
    }

    static func sha256(of url: URL) throws -> String {
        Hex.sha256(try Data(contentsOf: url, options: .alwaysMapped))
    }
}
