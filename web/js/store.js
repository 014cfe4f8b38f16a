// Browser storage: small settings in localStorage, gallery images (Blobs) in IndexedDB, which has
// room for hundreds of full-size PNGs where localStorage stops at about 5 MB.

const PREFIX = 'sdserve.';

// Values localStorage refused (private mode, a full quota, storage blocked): kept for this page's
// life instead, so the key, the last seed and the form still work until a reload.
const memory = new Map();

export const settings = {
  get(key, fallback = null) {
    try {
      const raw = memory.has(key) ? memory.get(key) : localStorage.getItem(PREFIX + key);
      return raw === null ? fallback : JSON.parse(raw);
    } catch { return fallback; }
  },
  set(key, value) {
    const raw = value === null || value === undefined ? null : JSON.stringify(value);
    try {
      if (raw === null) localStorage.removeItem(PREFIX + key);
      else localStorage.setItem(PREFIX + key, raw);
      memory.delete(key);
    } catch {
      memory.set(key, raw); // not remembered across reloads, but still used now
    }
  },
};

const DB_NAME = 'sdserve-studio';
const STORE = 'images';
let dbPromise = null;

function openDb() {
  if (!dbPromise) {
    dbPromise = new Promise((resolve, reject) => {
      if (!('indexedDB' in window)) { reject(new Error('IndexedDB is not available')); return; }
      const req = indexedDB.open(DB_NAME, 1);
      req.onupgradeneeded = () => {
        const db = req.result;
        if (!db.objectStoreNames.contains(STORE)) {
          db.createObjectStore(STORE, { keyPath: 'id' }).createIndex('created', 'created');
        }
      };
      req.onsuccess = () => resolve(req.result);
      req.onerror = () => reject(req.error);
    });
  }
  return dbPromise;
}

function tx(mode, fn) {
  return openDb().then((db) => new Promise((resolve, reject) => {
    const t = db.transaction(STORE, mode);
    const store = t.objectStore(STORE);
    let result;
    // A failed request also fails the transaction, which rejects below: no unhandled rejection here.
    Promise.resolve(fn(store)).then((r) => { result = r; }, () => {});
    t.oncomplete = () => resolve(result);
    // t.error is still null while a failed request's error event reaches the transaction.
    t.onerror = (e) => reject(e.target.error || t.error || new Error('the browser refused to store it'));
    t.onabort = () => reject(t.error || new Error('transaction aborted'));
  }));
}

function reqValue(req) {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

/** Gallery records: {id, created, blob, infotext, seed, mode, width, height, params}. */
export const galleryDb = {
  async all() {
    const db = await openDb();
    return new Promise((resolve, reject) => {
      const req = db.transaction(STORE).objectStore(STORE).index('created').getAll();
      req.onsuccess = () => resolve(req.result.reverse());
      req.onerror = () => reject(req.error);
    });
  },
  put(item) { return tx('readwrite', (s) => reqValue(s.put(item))); },
  remove(id) { return tx('readwrite', (s) => reqValue(s.delete(id))); },
  clear() { return tx('readwrite', (s) => reqValue(s.clear())); },
};
