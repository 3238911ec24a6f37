import Foundation

/// ExecuTorch FlatTensor `.ptd` files (extension/flat_tensor/serialize/flat_tensor.fbs, schema
/// version 0), written and read without the flatbuffers library: a port of the Kotlin core's Ptd.kt.
///
/// File layout, as executorch's `FlatTensorSerializer` writes it:
/// ```
/// 0   u32  offset of the root FlatTensor table (flatbuffer root uoffset)
/// 4   "FT01" flatbuffer file identifier
/// 8   "FH01" u32 header length (40), u64 flatbuffer_offset (48), u64 flatbuffer_size,
///          u64 segment_base_offset, u64 segment_data_size; zero padding to byte 56
/// 56  the rest of the flatbuffer (tables, vectors, strings)
/// ... zero padding to segment_base_offset (a multiple of 128)
///     segments, each at a multiple of 128 from segment_base_offset
/// ```
public enum PtdFormat {
    public static let segmentAlignment = 128
    public static let headerLength = 40
    public static let paddedHeaderLength = 48
    public static let version = 0

    /// executorch_flatbuffer.ScalarType codes.
    public static func scalarType(_ d: DType) -> Int {
        switch d {
        case .U8: return 0
        case .I8: return 1
        case .I32: return 3
        case .I64: return 4
        case .F16: return 5
        case .F32: return 6
        case .BF16: return 15
        }
    }
}

public struct PtdError: Error, CustomStringConvertible, Sendable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// Optional tensor metadata of a named blob (XNNPACK's delegate blobs carry none).
public struct TensorLayout: Equatable, Sendable {
    public let scalarType: Int
    public let sizes: [Int]
    public let dimOrder: [Int]

    public init(scalarType: Int, sizes: [Int], dimOrder: [Int]) {
        self.scalarType = scalarType
        self.sizes = sizes
        self.dimOrder = dimOrder
    }

    public static func contiguous(_ d: DType, _ shape: [Int]) -> TensorLayout {
        TensorLayout(scalarType: PtdFormat.scalarType(d), sizes: shape, dimOrder: Array(shape.indices))
    }
}

public struct PtdEntry: Sendable {
    public let key: String
    public let data: Data
    public let layout: TensorLayout?

    public init(key: String, data: Data, layout: TensorLayout? = nil) {
        self.key = key
        self.data = data
        self.layout = layout
    }
}

public enum PtdWriter {
    /// The swap `.ptd` for a swap plan: each tensor under its slot's data key, no layout (as exported).
    public static func entries(for plan: [SwapTensor], withLayout: Bool = false) throws -> [PtdEntry] {
        try plan.map { t in
            guard let key = t.key else { throw BundleError(.slot, "swap slot of \(t.param.string) has no data key") }
            return PtdEntry(key: key, data: t.data, layout: withLayout ? TensorLayout.contiguous(t.dtype, t.shape) : nil)
        }
    }

    /// The flatbuffer region plus placement: (bytes, segment base offset, segment offsets).
    static func layout(_ entries: [PtdEntry]) throws -> (fb: [UInt8], base: Int, offsets: [Int]) {
        var keys = Set<String>()
        for e in entries where !keys.insert(e.key).inserted { throw PtdError("duplicate data key \(e.key)") }
        var offsets: [Int] = []
        var end = 0
        for e in entries {
            let o = align(end, PtdFormat.segmentAlignment)
            offsets.append(o)
            end = o + e.data.count
        }
        let segmentDataSize = end
        var fb = FlatBuilder()
        fb.pos = 8 + PtdFormat.paddedHeaderLength
        // root FlatTensor: version u32 (id 0), segments (id 1), named_data (id 2)
        let root = fb.table(16, [4, 8, 12])
        fb.u32(root + 4, UInt32(PtdFormat.version))
        let segVec = fb.vector(entries.count, 4, 4)
        fb.uoffset(root + 8, segVec)
        for i in entries.indices {
            let t = fb.table(20, [4, 12], tableAlign8: true)
            fb.u64(t + 4, UInt64(offsets[i]))
            fb.u64(t + 12, UInt64(entries[i].data.count))
            fb.uoffset(segVec + 4 + 4 * i, t)
        }
        let ndVec = fb.vector(entries.count, 4, 4)
        fb.uoffset(root + 12, ndVec)
        for (i, e) in entries.enumerated() {
            let hasLayout = e.layout != nil
            let t = fb.table(hasLayout ? 16 : 12, hasLayout ? [4, 8, 12] : [4, 8])
            fb.uoffset(ndVec + 4 + 4 * i, t)
            fb.u32(t + 8, UInt32(i))
            let keyPos = fb.string(e.key)
            fb.uoffset(t + 4, keyPos)
            guard let l = e.layout else { continue }
            // TensorLayout: scalar_type byte (id 0), sizes [int32] (id 1), dim_order [uint8] (id 2)
            let lt = fb.table(16, [12, 4, 8])
            fb.uoffset(t + 12, lt)
            fb.u8(lt + 12, l.scalarType)
            let sv = fb.vector(l.sizes.count, 4, 4)
            for (k, s) in l.sizes.enumerated() { fb.u32(sv + 4 + 4 * k, UInt32(truncatingIfNeeded: s)) }
            fb.uoffset(lt + 4, sv)
            let dv = fb.vector(l.dimOrder.count, 1, 4)
            for (k, d) in l.dimOrder.enumerated() { fb.u8(dv + 4 + k, d) }
            fb.uoffset(lt + 8, dv)
        }
        fb.alignTo(8)
        let fbEnd = fb.pos
        let base = align(fbEnd, PtdFormat.segmentAlignment)
        // prefix: root offset, identifier, FH01 header
        fb.u32(0, UInt32(root))
        fb.bytes(4, Array("FT01".utf8))
        fb.bytes(8, Array("FH01".utf8))
        fb.u32(12, UInt32(PtdFormat.headerLength))
        fb.u64(16, UInt64(PtdFormat.paddedHeaderLength))
        fb.u64(24, UInt64(fbEnd - PtdFormat.paddedHeaderLength))
        fb.u64(32, UInt64(base))
        fb.u64(40, UInt64(segmentDataSize))
        return (Array(fb.buf[0..<fbEnd]), base, offsets)
    }

    public static func toData(_ entries: [PtdEntry]) throws -> Data {
        let (fb, base, offsets) = try layout(entries)
        var out = Data(fb)
        out.append(Data(count: base - fb.count))
        for (i, e) in entries.enumerated() {
            out.append(Data(count: base + offsets[i] - out.count))
            out.append(e.data)
        }
        return out
    }

    /// Writes a `.ptd` to `url` (replacing it), streaming the segments from their sources.
    public static func write(_ entries: [PtdEntry], to url: URL) throws {
        let (fb, base, offsets) = try layout(entries)
        let fm = FileManager.default
        if fm.fileExists(atPath: url.path) { try fm.removeItem(at: url) }
        guard fm.createFile(atPath: url.path, contents: nil) else { throw PtdError("cannot create \(url.path)") }
        let h = try FileHandle(forWritingTo: url)
        defer { try? h.close() }
        try h.write(contentsOf: Data(fb))
        var written = fb.count
        for (i, e) in entries.enumerated() {
            let at = base + offsets[i]
            if at > written { try h.write(contentsOf: Data(count: at - written)) }
            try h.write(contentsOf: e.data)
            written = at + e.data.count
        }
        if written < base { try h.write(contentsOf: Data(count: base - written)) }
        try h.synchronize()
    }

    static func align(_ v: Int, _ a: Int) -> Int { (v + a - 1) / a * a }

    /// A tiny front-to-back flatbuffer builder with absolute positions.
    struct FlatBuilder {
        var buf = [UInt8](repeating: 0, count: 1024)
        var pos = 0

        mutating func ensure(_ n: Int) {
            if n > buf.count { buf.append(contentsOf: [UInt8](repeating: 0, count: Swift.max(n, buf.count * 2) - buf.count)) }
        }

        mutating func alignTo(_ a: Int) {
            while pos % a != 0 { pos += 1 }
            ensure(pos)
        }

        /// vtable then table; fieldOffsets[i] is field i's offset in the table. Returns the table position.
        mutating func table(_ tableSize: Int, _ fieldOffsets: [Int], tableAlign8: Bool = false) -> Int {
            alignTo(2)
            let vt = pos
            let vtSize = 4 + 2 * fieldOffsets.count
            pos += vtSize
            // table: 4-aligned (soffset); 4 mod 8 when it holds u64 fields at +4 and +12
            while pos % 4 != 0 || (tableAlign8 && pos % 8 != 4) { pos += 1 }
            let t = pos
            pos += tableSize
            ensure(pos)
            u16(vt, vtSize)
            u16(vt + 2, tableSize)
            for (i, o) in fieldOffsets.enumerated() { u16(vt + 4 + 2 * i, o) }
            u32(t, UInt32(t - vt)) // soffset: vtable = table - soffset
            return t
        }

        mutating func vector(_ count: Int, _ elemSize: Int, _ align: Int) -> Int {
            alignTo(Swift.max(4, align))
            let v = pos
            pos += 4 + count * elemSize
            ensure(pos)
            u32(v, UInt32(count))
            return v
        }

        mutating func string(_ s: String) -> Int {
            let b = Array(s.utf8)
            alignTo(4)
            let p = pos
            pos += 4 + b.count + 1
            ensure(pos)
            u32(p, UInt32(b.count))
            bytes(p + 4, b)
            buf[p + 4 + b.count] = 0
            return p
        }

        mutating func uoffset(_ at: Int, _ target: Int) {
            precondition(target > at, "flatbuffer offsets must point forward")
            u32(at, UInt32(target - at))
        }

        mutating func u8(_ at: Int, _ v: Int) {
            ensure(at + 1)
            buf[at] = UInt8(truncatingIfNeeded: v)
        }

        mutating func u16(_ at: Int, _ v: Int) {
            ensure(at + 2)
            buf[at] = UInt8(truncatingIfNeeded: v)
            buf[at + 1] = UInt8(truncatingIfNeeded: v >> 8)
        }

        mutating func u32(_ at: Int, _ v: UInt32) {
            ensure(at + 4)
            for i in 0..<4 { buf[at + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt32(i))) }
        }

        mutating func u64(_ at: Int, _ v: UInt64) {
            ensure(at + 8)
            for i in 0..<8 { buf[at + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt64(i))) }
        }

        mutating func bytes(_ at: Int, _ b: [UInt8]) {
            ensure(at + b.count)
            buf.replaceSubrange(at..<(at + b.count), with: b)
        }
    }
}

/// A `.ptd` read back: key -> segment (a view into the mapped file), with optional tensor layout.
public final class PtdFile: @unchecked Sendable {
    public let source: ByteSource
    public let segmentBaseOffset: Int
    /// (offset, size) of each segment, relative to `segmentBaseOffset`.
    public let segments: [(offset: Int, size: Int)]
    /// Keys in file order, each with its segment index and layout.
    public let keys: [String]
    public let version: Int
    private let named: [String: (index: Int, layout: TensorLayout?)]

    private init(source: ByteSource, segmentBaseOffset: Int, segments: [(offset: Int, size: Int)], keys: [String],
                 named: [String: (index: Int, layout: TensorLayout?)], version: Int) {
        self.source = source
        self.segmentBaseOffset = segmentBaseOffset
        self.segments = segments
        self.keys = keys
        self.named = named
        self.version = version
    }

    public func buffer(_ key: String) -> Data? {
        guard let n = named[key] else { return nil }
        let s = segments[n.index]
        return source.slice(segmentBaseOffset + s.offset, s.size)
    }

    public func layout(_ key: String) -> TensorLayout? { named[key]?.layout }

    /// The index in `segments` of the segment `key` names, or nil when the file has no such key.
    public func segmentIndex(_ key: String) -> Int? { named[key]?.index }

    public static func read(_ source: ByteSource) throws -> PtdFile {
        if source.size < 48 { throw PtdError("not a .ptd file: too short") }
        let head = source.slice(0, 48)
        let ident = String(decoding: [head.byte(at: 4), head.byte(at: 5), head.byte(at: 6), head.byte(at: 7)], as: UTF8.self)
        let magic = String(decoding: [head.byte(at: 8), head.byte(at: 9), head.byte(at: 10), head.byte(at: 11)], as: UTF8.self)
        if !ident.hasPrefix("FT") || magic != "FH01" || head.u32LE(at: 12) < 40 {
            throw PtdError("not a .ptd file (identifier \(ident), header \(magic))")
        }
        let fo = head.u64LE(at: 16)
        let fs = head.u64LE(at: 24)
        let base = head.u64LE(at: 32)
        let segSize = head.u64LE(at: 40)
        let size = UInt64(source.size)
        if fo > size || fs > size || fo + fs > size || fo + fs > UInt64(Int32.max) || base > size || segSize > size || base + segSize > size {
            throw PtdError(".ptd header offsets are out of range")
        }
        let fb = Reader(b: [UInt8](source.slice(0, Int(fo + fs))))
        let root = try fb.deref(0)
        let version = try fb.scalarU32(root, 0)
        var segments: [(offset: Int, size: Int)] = []
        try fb.vectorOfTables(root, 1) { t in
            let o = try fb.scalarU64(t, 0)
            let s = try fb.scalarU64(t, 1)
            if o > segSize || s > segSize || o + s > segSize { throw PtdError(".ptd segment out of range") }
            segments.append((Int(o), Int(s)))
        }
        var keys: [String] = []
        var named: [String: (index: Int, layout: TensorLayout?)] = [:]
        try fb.vectorOfTables(root, 2) { t in
            guard let key = try fb.string(t, 0) else { throw PtdError(".ptd named data without a key") }
            let idx = Int(try fb.scalarU32(t, 1))
            if idx >= segments.count { throw PtdError(".ptd segment index out of range") }
            var layout: TensorLayout?
            if let f = try fb.field(t, 2) {
                let lt = try fb.deref(f)
                layout = TensorLayout(scalarType: try fb.scalarU8(lt, 0), sizes: try fb.intVector(lt, 1), dimOrder: try fb.byteVector(lt, 2))
            }
            if named[key] != nil { throw PtdError(".ptd has duplicate key \(key)") }
            named[key] = (idx, layout)
            keys.append(key)
        }
        return PtdFile(source: source, segmentBaseOffset: Int(base), segments: segments, keys: keys, named: named, version: Int(version))
    }

    private struct Reader {
        let b: [UInt8]

        func check(_ at: Int, _ n: Int) throws -> Int {
            if at < 0 || at + n > b.count { throw PtdError(".ptd flatbuffer offset out of range") }
            return at
        }

        func u16(_ at: Int) throws -> Int {
            let p = try check(at, 2)
            return Int(b[p]) | Int(b[p + 1]) << 8
        }

        func u32(_ at: Int) throws -> UInt32 {
            let p = try check(at, 4)
            return UInt32(b[p]) | UInt32(b[p + 1]) << 8 | UInt32(b[p + 2]) << 16 | UInt32(b[p + 3]) << 24
        }

        func u64(_ at: Int) throws -> UInt64 {
            let p = try check(at, 8)
            var v: UInt64 = 0
            for i in 0..<8 { v |= UInt64(b[p + i]) << (8 * UInt64(i)) }
            return v
        }

        func deref(_ at: Int) throws -> Int {
            let rel = try u32(at)
            let target = at + Int(rel)
            _ = try check(target, 4)
            return target
        }

        /// Absolute position of field `id` of the table at `t`, or nil when absent (default).
        func field(_ t: Int, _ id: Int) throws -> Int? {
            let soffset = Int(Int32(bitPattern: try u32(t)))
            let vt = t - soffset
            let vtSize = try u16(vt)
            let slot = 4 + 2 * id
            if slot + 2 > vtSize { return nil }
            let off = try u16(vt + slot)
            return off == 0 ? nil : t + off
        }

        func scalarU8(_ t: Int, _ id: Int) throws -> Int {
            guard let f = try field(t, id) else { return 0 }
            return Int(b[try check(f, 1)])
        }

        func scalarU32(_ t: Int, _ id: Int) throws -> UInt32 {
            guard let f = try field(t, id) else { return 0 }
            return try u32(f)
        }

        func scalarU64(_ t: Int, _ id: Int) throws -> UInt64 {
            guard let f = try field(t, id) else { return 0 }
            return try u64(f)
        }

        func string(_ t: Int, _ id: Int) throws -> String? {
            guard let f = try field(t, id) else { return nil }
            let p = try deref(f)
            let n = Int(try u32(p))
            _ = try check(p + 4, n)
            return String(decoding: b[(p + 4)..<(p + 4 + n)], as: UTF8.self)
        }

        func vectorOfTables(_ t: Int, _ id: Int, _ each: (Int) throws -> Void) throws {
            guard let f = try field(t, id) else { return }
            let v = try deref(f)
            let n = Int(try u32(v))
            for i in 0..<n { try each(try deref(v + 4 + 4 * i)) }
        }

        func intVector(_ t: Int, _ id: Int) throws -> [Int] {
            guard let f = try field(t, id) else { return [] }
            let v = try deref(f)
            let n = Int(try u32(v))
            return try (0..<n).map { Int(Int32(bitPattern: try u32(v + 4 + 4 * $0))) }
        }

        func byteVector(_ t: Int, _ id: Int) throws -> [Int] {
            guard let f = try field(t, id) else { return [] }
            let v = try deref(f)
            let n = Int(try u32(v))
            return try (0..<n).map { Int(b[try check(v + 4 + $0, 1)]) }
        }
    }
}
