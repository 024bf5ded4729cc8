package io.shoal;

import java.util.Arrays;
import java.util.List;

import org.apache.spark.SparkConf;
import org.apache.spark.api.java.JavaPairRDD;
import org.apache.spark.api.java.JavaSparkContext;

import scala.Tuple2;

/**
 * The job Shoal's hadoop image carries (there is no Spark examples jar on PyPI): counts
 * the words of an HDFS text file in PARTITIONS partitions (default 4, so the tasks
 * spread over the workers), writes "word\tcount" lines to an HDFS directory, and
 * prints the ten most frequent words and the total.
 *
 * <p>Usage: WordCount HDFS_IN HDFS_OUT [PARTITIONS]
 */
public final class WordCount {
    private WordCount() {}

    public static void main(String[] args) {
        if (args.length < 2 || args.length > 3) {
            System.err.println("usage: WordCount HDFS_IN HDFS_OUT [PARTITIONS]");
            System.exit(2);
        }
        int partitions = args.length == 3 ? Integer.parseInt(args[2]) : 4;
        SparkConf conf = new SparkConf().setAppName("shoal-wordcount");
        try (JavaSparkContext sc = new JavaSparkContext(conf)) {
            JavaPairRDD<String, Long> counts = sc.textFile(args[0], partitions)
                    .flatMap(line -> Arrays.asList(line.toLowerCase().split("[^\\p{L}\\p{N}']+")).iterator())
                    .filter(w -> !w.isEmpty())
                    .mapToPair(w -> new Tuple2<>(w, 1L))
                    .reduceByKey(Long::sum, partitions);
            counts.map(t -> t._1() + "\t" + t._2()).saveAsTextFile(args[1]);
            List<Tuple2<Long, String>> top = counts.mapToPair(Tuple2::swap).sortByKey(false).take(10);
            long total = counts.values().reduce(Long::sum);
            System.out.println("words: " + total + ", distinct: " + counts.count());
            for (Tuple2<Long, String> t : top) {
                System.out.println(t._2() + "\t" + t._1());
            }
        }
    }
}
