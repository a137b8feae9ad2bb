import HSMCore
