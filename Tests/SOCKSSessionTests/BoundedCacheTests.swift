import Testing

import SOCKSSession

@Suite struct BoundedCacheTests {
    @Test func holdsAtMostItsCapacityDroppingTheOldest() {
        var cache = BoundedCache<Int, String>(capacity: 3)
        for key in 0..<10 { cache.set("\(key)", for: key) }
        #expect(cache.count == 3)
        #expect(cache[9] == "9" && cache[8] == "8" && cache[7] == "7")
        #expect(cache[6] == nil)
        #expect(cache.evicted == 7)
    }

    @Test func updatingAKeyKeepsOneEntry() {
        var cache = BoundedCache<Int, Bool>(capacity: 2)
        cache.set(true, for: 1)
        cache.set(false, for: 1)
        cache.set(true, for: 2)
        #expect(cache.count == 2)
        #expect(cache[1] == false)
    }

    @Test func removedKeysDoNotCountAgainstItAndCanComeBack() {
        var cache = BoundedCache<Int, Int>(capacity: 2)
        cache.set(1, for: 1)
        cache.remove(1)
        cache.set(2, for: 2)
        cache.set(3, for: 3)
        #expect(cache.count == 2)
        #expect(cache.evicted == 0)
        cache.set(1, for: 1)
        #expect(cache[1] == 1 && cache.count == 2)
        cache.removeAll()
        #expect(cache.count == 0)
    }

    @Test func manyInsertionsStayBounded() {
        var cache = BoundedCache<Int, Int>(capacity: 100)
        for key in 0..<100_000 { cache.set(key, for: key) }
        #expect(cache.count == 100)
        #expect(cache[99_999] == 99_999)
    }

    @Test func removingAndAddingAgainForEverStaysBounded() {
        var cache = BoundedCache<Int, Int>(capacity: 4)
        for round in 0..<10_000 {
            cache.set(round, for: round % 3)
            cache.remove(round % 3)
        }
        cache.set(1, for: 1)
        #expect(cache.count == 1)
        #expect(cache[1] == 1)
    }
}
