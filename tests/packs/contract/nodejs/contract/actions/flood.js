const fs = require("fs");

exports.run = ({ megabytes = 8 }) => {
  const chunk = Buffer.alloc(1024 * 1024, "y");
  for (let i = 0; i < megabytes; i++) {
    fs.writeSync(1, chunk);
    fs.writeSync(2, chunk);
  }
  return { wrote_megabytes: megabytes };
};
