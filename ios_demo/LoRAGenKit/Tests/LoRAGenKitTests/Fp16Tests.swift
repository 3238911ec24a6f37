import Foundation
import XCTest
@testable import LoRAGenKit

/// binary16 / bfloat16 conversion (Kotlin twin: Fp16Test.kt).
final class Fp16Tests: XCTestCase {
    func testEveryHalfRoundTripsExactly() {
        var nans = 0
        for h in 0..<65536 {
            let f = Fp16.toFloat(UInt16(h))
            XCTAssertEqual(Fp16.fromFloat(f), UInt16(h), "half 0x\(String(h, radix: 16))")
            if f.isNaN { nans += 1 }
        }
        XCTAssertEqual(nans, 2 * 1023) // exponent 31 with a non-zero mantissa, both signs
    }

    func testEveryHalfDecodesToItsExactValue() {
        // value = (-1)^s * 2^(e-15) * (1 + m/1024), subnormal 2^-14 * m/1024 (exact in Double)
        for h in 0..<65536 {
            let s = h >> 15
            let e = (h >> 10) & 31
            let m = h & 1023
            let f = Fp16.toFloat(UInt16(h))
            if e == 31 {
                XCTAssertTrue(m == 0 ? f.isInfinite : f.isNaN)
                continue
            }
            let mag = e == 0 ? Double(m) * pow(2.0, -24) : Double(1024 + m) * pow(2.0, Double(e - 25))
            XCTAssertEqual(Double(f), s == 1 ? -mag : mag, "half 0x\(String(h, radix: 16))")
            if h == 0x8000 { XCTAssertEqual(f.bitPattern, Float(-0.0).bitPattern) }
        }
    }

    func testEveryRoundingBoundaryRoundsToNearestEven() {
        // for each pair of adjacent finite halves (both signs) the float midpoint rounds to the one
        // with an even mantissa, and the floats just beside it round to the nearer half
        var checked = 0
        for sign in [0, 0x8000] {
            for h in 0..<0x7BFF { // up to the pair (65280, 65504)
                let lo = Fp16.toFloat(UInt16(sign | h))
                let hi = Fp16.toFloat(UInt16(sign | (h + 1)))
                let midD = (Double(lo) + Double(hi)) / 2
                let mid = Float(midD)
                XCTAssertEqual(Double(mid), midD) // exact in float
                let even = h % 2 == 0 ? h : h + 1
                XCTAssertEqual(Fp16.fromFloat(mid), UInt16(sign | even))
                let towardLo = sign == 0 ? mid.nextDown : mid.nextUp
                let towardHi = sign == 0 ? mid.nextUp : mid.nextDown
                XCTAssertEqual(Fp16.fromFloat(towardLo), UInt16(sign | h))
                XCTAssertEqual(Fp16.fromFloat(towardHi), UInt16(sign | (h + 1)))
                checked += 1
            }
        }
        XCTAssertEqual(checked, 2 * 0x7BFF)
    }

    func testOverflowUnderflowAndSpecials() {
        XCTAssertEqual(Fp16.fromFloat(65504), 0x7BFF)
        XCTAssertEqual(Fp16.fromFloat(Float(65520).nextDown), 0x7BFF) // below the overflow midpoint
        XCTAssertEqual(Fp16.fromFloat(65520), 0x7C00) // midpoint to 2^16 rounds to even: infinity
        XCTAssertEqual(Fp16.fromFloat(-1e10), 0xFC00)
        XCTAssertEqual(Fp16.fromFloat(.infinity), 0x7C00)
        XCTAssertEqual(Fp16.fromFloat(2.9802322e-8), 0x0000) // exactly 2^-25: tie to even (0)
        XCTAssertEqual(Fp16.fromFloat(Float(2.9802322e-8).nextUp), 0x0001)
        XCTAssertEqual(Fp16.fromFloat(-1e-30), 0x8000)
        XCTAssertEqual(Fp16.fromFloat(.leastNonzeroMagnitude), 0x0000)
        XCTAssertEqual(Fp16.fromFloat(6.1035156e-5), 0x0400) // smallest normal
        XCTAssertEqual(Fp16.fromFloat(6.0975552e-5), 0x03FF) // largest subnormal
        XCTAssertEqual(Fp16.fromFloat(1), 0x3C00)
        XCTAssertEqual(Fp16.fromFloat(1.00048828125), 0x3C00) // 1 + 2^-11: tie, even stays 1
        XCTAssertEqual(Fp16.fromFloat(Float(1.00048828125).nextUp), 0x3C01)
        XCTAssertEqual(Fp16.fromFloat(-2), 0xC000)
        XCTAssertEqual(Fp16.fromFloat(1.0 / 3.0), 0x3555)
        XCTAssertTrue(Fp16.toFloat(Fp16.fromFloat(.nan)).isNaN)
        // a NaN whose payload lives only in the low 13 bits must stay NaN, not become infinity
        XCTAssertEqual(Fp16.fromFloat(Float(bitPattern: 0x7F80_0001)), 0x7E00)
        XCTAssertEqual(Fp16.fromFloat(Float(bitPattern: 0x4780_0000)), 0x7C00) // 2^16
    }

    func testBfloat16RoundsToNearestEven() {
        XCTAssertEqual(Bf16.fromFloat(1), 0x3F80)
        XCTAssertEqual(Bf16.fromFloat(Float(bitPattern: 0x3F80_8000)), 0x3F80) // tie -> even
        XCTAssertEqual(Bf16.fromFloat(Float(bitPattern: 0x3F81_8000)), 0x3F82) // tie -> even (up)
        XCTAssertEqual(Bf16.fromFloat(Float(bitPattern: 0x3F80_8001)), 0x3F81)
        for h in 0..<65536 {
            let f = Bf16.toFloat(UInt16(h))
            if !f.isNaN { XCTAssertEqual(Bf16.fromFloat(f), UInt16(h)) }
        }
    }
}
