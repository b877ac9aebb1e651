module.exports = {
  run({ message = "boom" }) {
    throw new Error(message);
  },
};
