// This browser's results, in IndexedDB (images are Blobs, too big for localStorage): each entry
// is one request as it was made (endpoint, fields, names of the files sent) and its images.

const DB = "easel-playground";
const STORE = "results";

function open() {
  return new Promise((resolve, reject) => {
    const request = indexedDB.open(DB, 1);
    request.onupgradeneeded = () => request.result.createObjectStore(STORE, { keyPath: "id" });
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

async function run(mode, work) {
  const db = await open();
  try {
    return await new Promise((resolve, reject) => {
      const tx = db.transaction(STORE, mode);
      const result = work(tx.objectStore(STORE));
      tx.oncomplete = () => resolve(result?.result);
      tx.onerror = () => reject(tx.error);
      tx.onabort = () => reject(tx.error);
    });
  } finally {
    db.close();
  }
}

/** Saves `entry` ({id, created, endpoint, fields, files, images: [{blob, mime}]}). */
export const save = (entry) => run("readwrite", (s) => s.put(entry));

/** Every entry, newest first. */
export async function all() {
  const entries = (await run("readonly", (s) => s.getAll())) || [];
  return entries.sort((a, b) => b.created - a.created);
}

export const remove = (id) => run("readwrite", (s) => s.delete(id));
export const clear = () => run("readwrite", (s) => s.clear());
