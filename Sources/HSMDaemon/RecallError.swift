import Dispatch
import Foundation
import Glibc
import HSMCore
import HSMKernel
import HSMStores
import Logging
import Synchronization

// Why a recall failed.
/// Why a recall failed, and the errno the accessing program gets.
enum RecallError: Error, CustomStringConvertible {
    case damagedMarker(String)
    case store(StoreError)
    case system(SystemError)
    case timedOut

    var errno: Int32 {
        switch self {
        case .damagedMarker: return EIO
        case .store(let e): return e.errno
        case .system(let e): return [ENOSPC, EDQUOT].contains(e.errno) ? e.errno : EIO
        // The kernel refuses ETIMEDOUT in FAN_DENY_ERRNO (docs/KERNEL-FACTS.md).
        case .timedOut: return EIO
        }
    }

    var description: String {
        switch self {
        case .damagedMarker(let d): return "damaged marker: \(d)"
        case .store(let e): return e.description
        case .system(let e): return e.description
        case .timedOut: return "recall timed out"
        }
    }
}
