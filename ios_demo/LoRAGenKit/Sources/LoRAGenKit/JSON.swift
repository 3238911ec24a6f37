import Foundation

// A small strict JSON reader for bundle headers and manifests, the Swift twin of the Kotlin core's
// Json.kt. It accepts what Python's `json.loads` accepts (RFC 8259 plus `NaN`, `Infinity`,
// `-Infinity`) and nothing more, so the three readers give the same verdicts:
//  - strings are kept as UTF-16 code units (`JSONString`): a `\ud800` escape is a lone surrogate,
//    as in Python and Java, which a Swift `String` cannot hold;
//  - integer literals are `.int` (Int64) or, beyond 64 bits, `.bigInt` (exact decimal text);
//  - a repeated key anywhere is `JSONError.duplicateKey`, raised when the object that holds it is
//    complete (as Python's `object_pairs_hook`); anything else is `JSONError.syntax`;
//  - `\uXXXX` takes ASCII hex digits only (Python's C scanner; the Kotlin reader's
//    `Character.digit` also takes other Unicode digits);
//  - nesting deeper than `JSON.maxDepth` containers is a syntax error. The parser is iterative, so
//    no header can exhaust a thread's stack.

/// A JSON string as UTF-16 code units. Equality, hashing and order (`CodePointOrder`) follow
/// Python's `str`.
public struct JSONString: Hashable, Sendable, CustomStringConvertible {
    public let units: [UInt16]

    public init(units: [UInt16]) { self.units = units }
    public init(_ string: String) { self.units = Array(string.utf16) }

    /// The text (a lone surrogate becomes U+FFFD here; use `units` for exact comparisons).
    public var string: String { String(decoding: units, as: UTF16.self) }
    public var description: String { string }

    public func hasSuffix(_ suffix: String) -> Bool {
        let s = Array(suffix.utf16)
        return units.count >= s.count && Array(units[(units.count - s.count)...]) == s
    }

    public func droppingSuffix(_ suffix: String) -> JSONString {
        hasSuffix(suffix) ? JSONString(units: Array(units.dropLast(suffix.utf16.count))) : self
    }

    public func appending(_ tail: String) -> JSONString { JSONString(units: units + Array(tail.utf16)) }
}

/// Python's string order: by code point (a valid surrogate pair is one code point; a lone
/// surrogate is its own code point), shorter prefix first. Kotlin: `CodePointOrder`.
public enum CodePointOrder {
    public static func compare(_ a: [UInt16], _ b: [UInt16]) -> Int {
        var i = 0
        var j = 0
        while i < a.count && j < b.count {
            let (x, nx) = codePoint(a, i)
            let (y, ny) = codePoint(b, j)
            if x != y { return x < y ? -1 : 1 }
            i += nx
            j += ny
        }
        let ra = a.count - i
        let rb = b.count - j
        return ra == rb ? 0 : (ra < rb ? -1 : 1)
    }

    public static func less(_ a: JSONString, _ b: JSONString) -> Bool { compare(a.units, b.units) < 0 }

    public static func sorted<S: Sequence>(_ names: S) -> [JSONString] where S.Element == JSONString {
        names.sorted(by: less)
    }

    private static func codePoint(_ s: [UInt16], _ i: Int) -> (UInt32, Int) {
        let u = s[i]
        if u >= 0xD800 && u < 0xDC00 && i + 1 < s.count && s[i + 1] >= 0xDC00 && s[i + 1] < 0xE000 {
            return (0x10000 + ((UInt32(u) - 0xD800) << 10) + (UInt32(s[i + 1]) - 0xDC00), 2)
        }
        return (UInt32(u), 1)
    }
}

/// A parsed JSON value.
public enum JSONValue: Sendable {
    case null
    case bool(Bool)
    /// An integer literal that fits in 64 bits.
    case int(Int64)
    /// An integer literal beyond 64 bits, as canonical decimal text (optional `-`, no leading zeros).
    case bigInt(String)
    /// A number with a fraction or exponent, or NaN / ±Infinity.
    case double(Double)
    case string(JSONString)
    case array([JSONValue])
    case object(JSONObject)

    public static func str(_ s: String) -> JSONValue { .string(JSONString(s)) }

    public var jsonString: JSONString? { if case .string(let s) = self { return s }; return nil }
    public var stringValue: String? { jsonString?.string }
    public var objectValue: JSONObject? { if case .object(let o) = self { return o }; return nil }
    public var arrayValue: [JSONValue]? { if case .array(let a) = self { return a }; return nil }
    public var boolValue: Bool? { if case .bool(let b) = self { return b }; return nil }

    /// An integer literal (not a bool, not a float), as Python's `isinstance(x, int) and not bool`.
    public var isInteger: Bool {
        switch self {
        case .int, .bigInt: return true
        default: return false
        }
    }

    /// The value of an integer literal that fits in `Int`.
    public var intValue: Int? { if case .int(let v) = self { return Int(exactly: v) }; return nil }

    /// The numeric value of a number or boolean (Python: bool is an int), else nil.
    public var number: Double? {
        switch self {
        case .bool(let b): return b ? 1 : 0
        case .int(let v): return Double(v)
        case .bigInt(let s): return Double(s) ?? (s.hasPrefix("-") ? -.infinity : .infinity)
        case .double(let d): return d
        default: return nil
        }
    }
}

/// A JSON object with its keys in document order.
public struct JSONObject: Sendable {
    public private(set) var keys: [JSONString] = []
    public private(set) var values: [JSONValue] = []
    private var index: [JSONString: Int] = [:]

    public init() {}

    public init(_ pairs: [(String, JSONValue)]) {
        for (k, v) in pairs { self[k] = v }
    }

    public var count: Int { keys.count }
    public var isEmpty: Bool { keys.isEmpty }

    public var entries: [(key: JSONString, value: JSONValue)] {
        zip(keys, values).map { (key: $0.0, value: $0.1) }
    }

    public func contains(_ key: JSONString) -> Bool { index[key] != nil }

    public subscript(key: JSONString) -> JSONValue? {
        get { index[key].map { values[$0] } }
        set {
            if let i = index[key] {
                if let v = newValue {
                    values[i] = v
                } else {
                    keys.remove(at: i)
                    values.remove(at: i)
                    index = [:]
                    for (n, k) in keys.enumerated() { index[k] = n }
                }
            } else if let v = newValue {
                index[key] = keys.count
                keys.append(key)
                values.append(v)
            }
        }
    }

    public subscript(key: String) -> JSONValue? {
        get { self[JSONString(key)] }
        set { self[JSONString(key)] = newValue }
    }

    public func obj(_ key: String) -> JSONObject? { self[key]?.objectValue }
    public func str(_ key: String) -> String? { self[key]?.stringValue }
}

public enum JSONError: Error, Equatable, Sendable {
    case syntax(String, Int)
    case duplicateKey(JSONString)
}

public enum JSON {
    /// Containers nested deeper than this are refused (Kotlin: `Json.MAX_DEPTH`; real headers are 4 deep).
    public static let maxDepth = 512
    /// Longest integer literal accepted, in digits (sign excluded), as Python's bundle reader (Kotlin: `Json.MAX_INT_DIGITS`).
    public static let maxIntDigits = 4300

    public static func parse(_ text: String) throws -> JSONValue { try parse(units: Array(text.utf16)) }

    public static func parse(units: [UInt16]) throws -> JSONValue {
        var p = Parser(s: units)
        return try p.document()
    }

    /// Decodes strict UTF-8 (RFC 3629: no overlong forms, no surrogates, nothing above U+10FFFF,
    /// nothing truncated) into UTF-16 code units; nil for invalid input. Python's and Java's
    /// decoders refuse exactly these.
    public static func decodeUTF8Strict(_ p: UnsafeRawBufferPointer) -> [UInt16]? {
        var out: [UInt16] = []
        out.reserveCapacity(p.count)
        var i = 0
        let n = p.count
        func cont(_ k: Int, _ lo: UInt8 = 0x80, _ hi: UInt8 = 0xBF) -> UInt32? {
            guard k < n else { return nil }
            let b = p[k]
            return b >= lo && b <= hi ? UInt32(b & 0x3F) : nil
        }
        while i < n {
            let b0 = p[i]
            if b0 < 0x80 {
                out.append(UInt16(b0))
                i += 1
                continue
            }
            var cp: UInt32
            if b0 < 0xC2 {
                return nil // a continuation byte, or an overlong 2-byte lead (C0, C1)
            } else if b0 < 0xE0 {
                guard let c1 = cont(i + 1) else { return nil }
                cp = (UInt32(b0 & 0x1F) << 6) | c1
                i += 2
            } else if b0 < 0xF0 {
                let lo: UInt8 = b0 == 0xE0 ? 0xA0 : 0x80 // no overlong 3-byte forms
                let hi: UInt8 = b0 == 0xED ? 0x9F : 0xBF // no surrogates
                guard let c1 = cont(i + 1, lo, hi), let c2 = cont(i + 2) else { return nil }
                cp = (UInt32(b0 & 0x0F) << 12) | (c1 << 6) | c2
                i += 3
            } else if b0 < 0xF5 {
                let lo: UInt8 = b0 == 0xF0 ? 0x90 : 0x80 // no overlong 4-byte forms
                let hi: UInt8 = b0 == 0xF4 ? 0x8F : 0xBF // nothing above U+10FFFF
                guard let c1 = cont(i + 1, lo, hi), let c2 = cont(i + 2), let c3 = cont(i + 3) else { return nil }
                cp = (UInt32(b0 & 0x07) << 18) | (c1 << 12) | (c2 << 6) | c3
                i += 4
            } else {
                return nil
            }
            if cp >= 0x10000 {
                let v = cp - 0x10000
                out.append(UInt16(0xD800 + (v >> 10)))
                out.append(UInt16(0xDC00 + (v & 0x3FF)))
            } else {
                out.append(UInt16(cp))
            }
        }
        return out
    }

    // MARK: - parser

    private static let quote: UInt16 = 0x22, backslash: UInt16 = 0x5C, slash: UInt16 = 0x2F
    private static let lbrace: UInt16 = 0x7B, rbrace: UInt16 = 0x7D, lbracket: UInt16 = 0x5B, rbracket: UInt16 = 0x5D
    private static let comma: UInt16 = 0x2C, colon: UInt16 = 0x3A, minus: UInt16 = 0x2D, plus: UInt16 = 0x2B
    private static let dot: UInt16 = 0x2E, zero: UInt16 = 0x30, nine: UInt16 = 0x39

    /// One open container while parsing (a class so appends happen in place).
    private final class Frame {
        let isObject: Bool
        var items: [JSONValue] = []
        var pairs: [(JSONString, JSONValue)] = []
        var key = JSONString(units: [])
        init(isObject: Bool) { self.isObject = isObject }
    }

    private struct Parser {
        let s: [UInt16]
        var pos = 0

        init(s: [UInt16]) { self.s = s }

        func syntax(_ msg: String) -> JSONError { .syntax(msg, pos) }

        mutating func skipWS() {
            while pos < s.count {
                let c = s[pos]
                if c == 0x20 || c == 0x09 || c == 0x0A || c == 0x0D { pos += 1 } else { break }
            }
        }

        static func isDigit(_ c: UInt16) -> Bool { c >= JSON.zero && c <= JSON.nine }

        mutating func document() throws -> JSONValue {
            skipWS()
            let v = try value()
            skipWS()
            if pos != s.count { throw syntax("extra data") }
            return v
        }

        /// Key, ':' and the whitespace before the value; `pos` is at the opening quote.
        mutating func key() throws -> JSONString {
            if pos >= s.count || s[pos] != JSON.quote { throw syntax("expecting property name enclosed in double quotes") }
            let k = try string()
            skipWS()
            if pos >= s.count || s[pos] != JSON.colon { throw syntax("expecting ':' delimiter") }
            pos += 1
            skipWS()
            return JSONString(units: k)
        }

        mutating func value() throws -> JSONValue {
            var stack: [Frame] = []
            while true {
                // the start of a value; whitespace before it is already skipped
                if pos >= s.count { throw syntax("expecting value") }
                var v: JSONValue
                let c = s[pos]
                if c == JSON.lbrace || c == JSON.lbracket {
                    if stack.count + 1 > JSON.maxDepth { throw syntax("nested too deeply") }
                    let isObject = c == JSON.lbrace
                    pos += 1
                    skipWS()
                    if pos < s.count && s[pos] == (isObject ? JSON.rbrace : JSON.rbracket) {
                        pos += 1
                        v = isObject ? .object(JSONObject()) : .array([])
                    } else {
                        let f = Frame(isObject: isObject)
                        if isObject { f.key = try key() }
                        stack.append(f)
                        continue
                    }
                } else {
                    v = try scalar()
                }
                // hand the value to the open containers, closing those that end here
                attach: while true {
                    guard let top = stack.last else { return v }
                    if top.isObject { top.pairs.append((top.key, v)) } else { top.items.append(v) }
                    skipWS()
                    if pos >= s.count { throw syntax("expecting ',' delimiter") }
                    let d = s[pos]
                    pos += 1
                    if d == (top.isObject ? JSON.rbrace : JSON.rbracket) {
                        stack.removeLast()
                        if top.isObject {
                            v = .object(try Parser.complete(top.pairs))
                        } else {
                            v = .array(top.items)
                        }
                        continue attach
                    }
                    if d != JSON.comma {
                        pos -= 1
                        throw syntax("expecting ',' delimiter")
                    }
                    skipWS()
                    if top.isObject { top.key = try key() }
                    break attach
                }
            }
        }

        /// Like Python's object_pairs_hook: duplicates are seen once the object is complete.
        static func complete(_ pairs: [(JSONString, JSONValue)]) throws -> JSONObject {
            var o = JSONObject()
            for (k, v) in pairs {
                if o.contains(k) { throw JSONError.duplicateKey(k) }
                o[k] = v
            }
            return o
        }

        mutating func scalar() throws -> JSONValue {
            let c = s[pos]
            switch c {
            case JSON.quote: return .string(JSONString(units: try string()))
            case 0x74: return try literal("true", .bool(true)) // t
            case 0x66: return try literal("false", .bool(false)) // f
            case 0x6E: return try literal("null", .null) // n
            case 0x4E: return try literal("NaN", .double(.nan)) // N
            case 0x49: return try literal("Infinity", .double(.infinity)) // I
            default:
                if c == JSON.minus || Parser.isDigit(c) { return try number() }
                throw syntax("expecting value")
            }
        }

        func startsWith(_ word: String, at p: Int) -> Bool {
            let w = Array(word.utf16)
            return p + w.count <= s.count && Array(s[p..<(p + w.count)]) == w
        }

        mutating func literal(_ word: String, _ v: JSONValue) throws -> JSONValue {
            if !startsWith(word, at: pos) { throw syntax("expecting value") }
            pos += word.utf16.count
            return v
        }

        mutating func string() throws -> [UInt16] {
            pos += 1 // opening quote
            var out: [UInt16] = []
            while true {
                if pos >= s.count { throw syntax("unterminated string") }
                let c = s[pos]
                pos += 1
                if c == JSON.quote { return out }
                if c == JSON.backslash {
                    if pos >= s.count { throw syntax("unterminated string") }
                    let e = s[pos]
                    pos += 1
                    switch e {
                    case JSON.quote: out.append(JSON.quote)
                    case JSON.backslash: out.append(JSON.backslash)
                    case JSON.slash: out.append(JSON.slash)
                    case 0x62: out.append(0x08) // b
                    case 0x66: out.append(0x0C) // f
                    case 0x6E: out.append(0x0A) // n
                    case 0x72: out.append(0x0D) // r
                    case 0x74: out.append(0x09) // t
                    case 0x75: out.append(try hex4()) // u: lone surrogates are kept, as Python does
                    default:
                        pos -= 1
                        throw syntax("invalid \\escape")
                    }
                } else if c < 0x20 {
                    pos -= 1
                    throw syntax("invalid control character in string")
                } else {
                    out.append(c)
                }
            }
        }

        mutating func hex4() throws -> UInt16 {
            if pos + 4 > s.count { throw syntax("invalid \\uXXXX escape") }
            var v: UInt16 = 0
            for i in 0..<4 {
                let c = s[pos + i]
                let d: UInt16
                switch c {
                case 0x30...0x39: d = c - 0x30
                case 0x41...0x46: d = c - 0x41 + 10
                case 0x61...0x66: d = c - 0x61 + 10
                default: throw syntax("invalid \\uXXXX escape")
                }
                v = v * 16 + d
            }
            pos += 4
            return v
        }

        mutating func number() throws -> JSONValue {
            let start = pos
            if s[pos] == JSON.minus {
                pos += 1
                if startsWith("Infinity", at: pos) {
                    pos += 8
                    return .double(-.infinity)
                }
            }
            if pos >= s.count || !Parser.isDigit(s[pos]) {
                pos = start
                throw syntax("expecting value")
            }
            if s[pos] == JSON.zero {
                pos += 1
            } else {
                while pos < s.count && Parser.isDigit(s[pos]) { pos += 1 }
            }
            var isInt = true
            if pos + 1 < s.count && s[pos] == JSON.dot && Parser.isDigit(s[pos + 1]) {
                isInt = false
                pos += 1
                while pos < s.count && Parser.isDigit(s[pos]) { pos += 1 }
            }
            if pos < s.count && (s[pos] == 0x65 || s[pos] == 0x45) { // e E
                var q = pos + 1
                if q < s.count && (s[q] == JSON.plus || s[q] == JSON.minus) { q += 1 }
                if q < s.count && Parser.isDigit(s[q]) {
                    isInt = false
                    while q < s.count && Parser.isDigit(s[q]) { q += 1 }
                    pos = q
                }
            }
            let lit = String(decoding: s[start..<pos], as: UTF16.self)
            if !isInt {
                // correctly rounded; out of range gives ±inf or ±0, as Python's float()
                return .double(Double(lit) ?? lit.withCString { strtod($0, nil) })
            }
            // Python's reader refuses integer literals of more than 4300 digits (format.MAX_INT_DIGITS)
            if lit.utf8.count - (lit.hasPrefix("-") ? 1 : 0) > JSON.maxIntDigits {
                pos = start
                throw syntax("integer literal longer than \(JSON.maxIntDigits) digits")
            }
            if let v = Int64(lit) { return .int(v) }
            return .bigInt(lit)
        }
    }
}

// MARK: - Python semantics: equality, str(), repr(), json.dumps

public enum PyJSON {
    /// Equality with exact JSON types: 1, 1.0 and true all differ; NaN != NaN (Python `format.json_equal`).
    public static func strictEquals(_ a: JSONValue?, _ b: JSONValue?) -> Bool {
        switch (a ?? .null, b ?? .null) {
        case (.null, .null): return true
        case let (.bool(x), .bool(y)): return x == y
        case let (.int(x), .int(y)): return x == y
        case let (.bigInt(x), .bigInt(y)): return x == y
        case let (.double(x), .double(y)): return x == y
        case let (.string(x), .string(y)): return x == y
        case let (.array(x), .array(y)): return x.count == y.count && zip(x, y).allSatisfy { strictEquals($0.0, $0.1) }
        case let (.object(x), .object(y)):
            return Set(x.keys) == Set(y.keys) && x.keys.allSatisfy { strictEquals(x[$0], y[$0]) }
        default: return false
        }
    }

    /// A JSON number (never a bool) as a finite Double, else nil (Python `format.finite_number`).
    public static func finite(_ v: JSONValue?) -> Double? {
        let d: Double
        switch v {
        case .int(let x)?: d = Double(x)
        case .bigInt(let s)?: d = Double(s) ?? .infinity
        case .double(let x)?: d = x
        default: return nil
        }
        return d.isFinite ? d : nil
    }

    /// Python's `==` on parsed JSON values (`1 == 1.0 == True`, dicts unordered, NaN != NaN);
    /// a missing value (nil) equals JSON null, as `dict.get` returns None for both.
    public static func equals(_ a: JSONValue?, _ b: JSONValue?) -> Bool {
        let x = a ?? .null
        let y = b ?? .null
        switch (x, y) {
        case (.null, .null): return true
        case (.null, _), (_, .null): return false
        case (.string(let p), .string(let q)): return p == q
        case (.string, _), (_, .string): return false
        case (.object(let p), .object(let q)):
            if p.count != q.count { return false }
            for (k, v) in p.entries {
                guard let w = q[k], equals(v, w) else { return false }
            }
            return true
        case (.object, _), (_, .object): return false
        case (.array(let p), .array(let q)):
            if p.count != q.count { return false }
            for i in p.indices where !equals(p[i], q[i]) { return false }
            return true
        case (.array, _), (_, .array): return false
        case (.double(let p), .double(let q)): return p == q
        case (.double(let d), let i), (let i, .double(let d)):
            // int vs float: exact comparison, as Python
            guard let di = exactIntegerText(d) else { return false }
            return di == integerText(i)
        default:
            return integerText(x) == integerText(y)
        }
    }

    /// Decimal text of an integer-like value (bool, int, bigInt), else nil.
    static func integerText(_ v: JSONValue) -> String? {
        switch v {
        case .bool(let b): return b ? "1" : "0"
        case .int(let i): return String(i)
        case .bigInt(let s): return s
        default: return nil
        }
    }

    /// The exact decimal text of an integral finite double, else nil.
    static func exactIntegerText(_ d: Double) -> String? {
        guard d.isFinite, d.rounded(.towardZero) == d else { return nil }
        if abs(d) < 9.0e18 { return String(Int64(d)) }
        // |d| = m * 2^e with a 53-bit integer m and e > 0: double a decimal digit array e times
        let m = d.significandBitPattern | (UInt64(1) << 52)
        let e = Int(d.exponent) - 52
        var digits = Array(String(m).utf8).map { $0 - 48 } // most significant first
        for _ in 0..<e {
            var carry: UInt8 = 0
            for i in stride(from: digits.count - 1, through: 0, by: -1) {
                let v = digits[i] * 2 + carry
                digits[i] = v % 10
                carry = v / 10
            }
            if carry > 0 { digits.insert(carry, at: 0) }
        }
        return (d < 0 ? "-" : "") + String(decoding: digits.map { $0 + 48 }, as: UTF8.self)
    }

    /// Python's `repr()` of a parsed JSON value (nil: `None`), for one-line error messages.
    public static func repr(_ v: JSONValue?) -> String {
        switch v ?? .null {
        case .null: return "None"
        case .bool(let b): return b ? "True" : "False"
        case .int(let i): return String(i)
        case .bigInt(let s): return s
        case .double(let d): return floatRepr(d)
        case .string(let s): return reprString(s)
        case .array(let a): return "[" + a.map { repr($0) }.joined(separator: ", ") + "]"
        case .object(let o): return "{" + o.entries.map { reprString($0.key) + ": " + repr($0.value) }.joined(separator: ", ") + "}"
        }
    }

    /// Python's `str()`: strings as they are, everything else as `repr()`.
    public static func str(_ v: JSONValue?) -> String {
        if case .string(let s)? = v { return s.string }
        return repr(v)
    }

    static func floatRepr(_ d: Double) -> String {
        if d.isNaN { return "nan" }
        if d.isInfinite { return d < 0 ? "-inf" : "inf" }
        return d.description // shortest round-trip digits, like Python's repr (8.0, 1e-05, 1e+16)
    }

    static func reprString(_ s: JSONString) -> String {
        let hasSingle = s.units.contains(0x27)
        let hasDouble = s.units.contains(0x22)
        let q: UInt16 = hasSingle && !hasDouble ? 0x22 : 0x27
        var out = ascii(q)
        var i = 0
        let u = s.units
        while i < u.count {
            let c = u[i]
            if c >= 0xD800 && c < 0xDC00 && i + 1 < u.count && u[i + 1] >= 0xDC00 && u[i + 1] < 0xE000 {
                out += String(decoding: u[i...(i + 1)], as: UTF16.self)
                i += 2
                continue
            }
            switch c {
            case q, 0x5C: out += "\\" + ascii(c)
            case 0x09: out += "\\t"
            case 0x0A: out += "\\n"
            case 0x0D: out += "\\r"
            case 0..<0x20, 0x7F: out += "\\x" + hexDigits(Int(c), width: 2)
            case 0xD800..<0xE000: out += "\\u" + hexDigits(Int(c), width: 4)
            default: out += String(decoding: [c], as: UTF16.self)
            }
            i += 1
        }
        out += ascii(q)
        return out
    }

    /// `json.dumps(v, separators=(",", ":"), ensure_ascii=True, sort_keys=sortKeys)`: the exact text
    /// Python's bundle writer produces.
    public static func dumps(_ v: JSONValue, sortKeys: Bool = false) -> String {
        var out = ""
        emit(v, sortKeys, &out)
        return out
    }

    private static func emit(_ v: JSONValue, _ sortKeys: Bool, _ out: inout String) {
        switch v {
        case .null: out += "null"
        case .bool(let b): out += b ? "true" : "false"
        case .int(let i): out += String(i)
        case .bigInt(let s): out += s
        case .double(let d):
            if d.isNaN { out += "NaN" } else if d.isInfinite { out += d < 0 ? "-Infinity" : "Infinity" } else { out += d.description }
        case .string(let s): quote(s, &out)
        case .array(let a):
            out += "["
            for (i, x) in a.enumerated() {
                if i > 0 { out += "," }
                emit(x, sortKeys, &out)
            }
            out += "]"
        case .object(let o):
            out += "{"
            let keys = sortKeys ? CodePointOrder.sorted(o.keys) : o.keys
            for (i, k) in keys.enumerated() {
                if i > 0 { out += "," }
                quote(k, &out)
                out += ":"
                emit(o[k]!, sortKeys, &out)
            }
            out += "}"
        }
    }

    /// One UTF-16 unit as text (for ASCII).
    static func ascii(_ c: UInt16) -> String { String(decoding: [c], as: UTF16.self) }

    /// Lowercase hex, zero-padded to `width` digits.
    static func hexDigits(_ v: Int, width: Int) -> String {
        let h = String(v, radix: 16)
        return h.count >= width ? h : String(repeating: "0", count: width - h.count) + h
    }

    public static func quote(_ s: JSONString) -> String {
        var out = ""
        quote(s, &out)
        return out
    }

    private static func quote(_ s: JSONString, _ out: inout String) {
        out += "\""
        for c in s.units {
            switch c {
            case 0x22: out += "\\\""
            case 0x5C: out += "\\\\"
            case 0x0A: out += "\\n"
            case 0x0D: out += "\\r"
            case 0x09: out += "\\t"
            case 0x08: out += "\\b"
            case 0x0C: out += "\\f"
            case 0x20...0x7E: out += ascii(c)
            default: out += "\\u" + hexDigits(Int(c), width: 4)
            }
        }
        out += "\""
    }
}
