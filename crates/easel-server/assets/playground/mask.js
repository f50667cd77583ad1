// The mask painter: a canvas the size of the first input image, laid over it. What is painted
// is the area to edit; the export follows OpenAI's convention, a PNG that is opaque where the
// image is kept and transparent (alpha 0) where it was painted.

const UNDO_DEPTH = 30;

export class MaskPainter {
  /** `canvas` lies over `image`; the tool buttons and size slider are wired by the caller. */
  constructor(canvas) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d", { willReadFrequently: true });
    this.tool = "brush";
    this.size = 24;
    this.undoStack = [];
    this.painted = false;
    this.last = null;
    canvas.addEventListener("pointerdown", (e) => this.#down(e));
    canvas.addEventListener("pointermove", (e) => this.#move(e));
    for (const type of ["pointerup", "pointercancel", "pointerleave"]) {
      canvas.addEventListener(type, () => (this.last = null));
    }
  }

  /** A fresh, empty mask the size of the image (its natural pixels). */
  reset(width, height) {
    this.canvas.width = width;
    this.canvas.height = height;
    this.undoStack = [];
    this.painted = false;
  }

  get ready() {
    return this.canvas.width > 0 && this.canvas.height > 0;
  }

  #point(e) {
    const box = this.canvas.getBoundingClientRect();
    const scale = this.canvas.width / box.width;
    return { x: (e.clientX - box.left) * scale, y: (e.clientY - box.top) * scale, scale };
  }

  #down(e) {
    if (!this.ready || e.button > 0) return;
    e.preventDefault();
    this.canvas.setPointerCapture?.(e.pointerId);
    this.#snapshot();
    this.last = this.#point(e);
    this.#stroke(this.last, this.last);
  }

  #move(e) {
    if (!this.last) return;
    const p = this.#point(e);
    this.#stroke(this.last, p);
    this.last = p;
  }

  #stroke(from, to) {
    const ctx = this.ctx;
    ctx.save();
    ctx.globalCompositeOperation = this.tool === "eraser" ? "destination-out" : "source-over";
    ctx.strokeStyle = ctx.fillStyle = "#e0245e";
    ctx.lineCap = ctx.lineJoin = "round";
    ctx.lineWidth = this.size * to.scale;
    ctx.beginPath();
    ctx.moveTo(from.x, from.y);
    ctx.lineTo(to.x + 0.01, to.y);
    ctx.stroke();
    ctx.restore();
    if (this.tool === "brush") this.painted = true;
    else this.painted = this.#anyPaint();
  }

  #snapshot() {
    this.undoStack.push(this.ctx.getImageData(0, 0, this.canvas.width, this.canvas.height));
    if (this.undoStack.length > UNDO_DEPTH) this.undoStack.shift();
  }

  #anyPaint() {
    const { data } = this.ctx.getImageData(0, 0, this.canvas.width, this.canvas.height);
    for (let i = 3; i < data.length; i += 4) if (data[i]) return true;
    return false;
  }

  undo() {
    const previous = this.undoStack.pop();
    if (!previous) return;
    this.ctx.putImageData(previous, 0, 0);
    this.painted = this.#anyPaint();
  }

  clear() {
    if (!this.ready) return;
    this.#snapshot();
    this.ctx.clearRect(0, 0, this.canvas.width, this.canvas.height);
    this.painted = false;
  }

  /** Paints everything: the whole image is edited (a keyboard-only way to make a mask). */
  fill() {
    if (!this.ready) return;
    this.#snapshot();
    this.ctx.fillStyle = "#e0245e";
    this.ctx.fillRect(0, 0, this.canvas.width, this.canvas.height);
    this.painted = true;
  }

  /** The mask as a PNG Blob (alpha 0 where painted), or null when nothing is painted. */
  async toBlob() {
    if (!this.ready || !this.painted) return null;
    const out = document.createElement("canvas");
    out.width = this.canvas.width;
    out.height = this.canvas.height;
    const ctx = out.getContext("2d");
    ctx.fillStyle = "#ffffff";
    ctx.fillRect(0, 0, out.width, out.height);
    ctx.globalCompositeOperation = "destination-out";
    ctx.drawImage(this.canvas, 0, 0);
    return new Promise((resolve) => out.toBlob(resolve, "image/png"));
  }
}
