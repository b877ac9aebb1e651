exports.run = ({ megabytes = 1024 }) => {
  const held = [];
  for (let i = 0; i < megabytes / 16; i++) held.push(Buffer.alloc(16 * 1024 * 1024, 1)); // touched pages
  return held.length;
};
