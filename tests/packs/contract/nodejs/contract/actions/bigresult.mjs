export default function run({ size = 2 * 1024 * 1024 }) {
  return "x".repeat(size);
}
