import Foundation
import Glibc
import XCTest
import HSMCore

// What only the store tests need; the shared helpers are in Tests/TestSupport.

let testObject = ObjectID(hex: "00112233445566778899aabbccddeeff")!

